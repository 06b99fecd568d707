"""util/layouts.py: every dataset's layout, listing files row by row, what evaluate.py reads."""
from __future__ import annotations

import json
import shutil

import pytest

import _video_utils as U
from util import layouts as L

DFDCP = {"method_A/1/1_A/111_1_A.mp4": {"label": "fake", "set": "test"},
         "method_B/2/2_B/222_2_B.mp4": {"label": "fake", "set": "train"},
         "original_videos/1/1_A.mp4": {"label": "real", "set": "test"}}
LAYOUTS = {  # dataset: (files, {listing file: content}, a few of its videos as (split, source, id, label))
    "dfd": (["original_sequences/actors/c23/videos/01__a.mp4",
             "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__a__AB.mp4"], {},
            {("test", "actors", "01__a", 0), ("test", "DeepFakeDetection", "01_02__a__AB", 1)}),
    "cdfv2": (["Celeb-real/a.mp4", "Celeb-real/b.mp4", "YouTube-real/c.mp4", "Celeb-synthesis/d.mp4"],
              {"List_of_testing_videos.txt": "1 Celeb-real/a.mp4\n0 Celeb-synthesis/d.mp4\n"},
              {("test", "Celeb-real", "a", 0), ("train", "Celeb-real", "b", 0),
               ("train", "YouTube-real", "c", 0), ("test", "Celeb-synthesis", "d", 1)}),
    "dfdc": (["test/videos/aaa.mp4", "test/videos/bbb.mp4"],
             {"test/labels.csv": "\ufefffilename,label\naaa.mp4,1\nbbb.mp4,0.0\nzzz.mp4,1\n"},  # no zzz
             {("test", "fake", "aaa", 1), ("test", "real", "bbb", 0)}),
    "dfdcp": (list(DFDCP), {"dataset.json": json.dumps(DFDCP)},
              {("test", "method_A", "111_1_A", 1), ("train", "method_B", "222_2_B", 1),
               ("test", "original_videos", "1_A", 0)}),
    "ffiw": (["FFIW10K-v1-release/source/train/00001.mp4", "FFIW10K-v1-release/target/val/00001.mp4",
              "FFIW10K-v1-release-test/target/test/00002.mp4"], {},
             {("train", "source", "00001", 0), ("val", "target", "00001", 1),
              ("test", "target", "00002", 1)}),
    "dsv1": (["train/real/a/x.mp4", "train/fake-lipsync/x.mp4", "test/fake-swap/m1/y.mp4",
              "test/fake-swap/m2/y.mp4"], {},  # one stem twice: the ids differ
             {("train", "real", "x", 0), ("train", "fake-lipsync", "x", 1), ("test", "fake-swap", "m1__y", 1),
              ("test", "fake-swap", "m2__y", 1)}),
    "folder": (["my_reals/a.mp4", "generated/b.avi", "generated/c.png", "generated/notes.txt",
                "fake/clip.mp4", "fake/clip.png", "test/x.mp4"], {},  # a folder named test is a source
               {("test", "my_reals", "a", 0), ("test", "generated", "b", 1), ("test", "generated", "c", 1),
                ("test", "fake", "clip.mp4", 1), ("test", "fake", "clip.png", 1), ("test", "test", "x", 1)}),
}


@pytest.mark.parametrize("dataset", list(LAYOUTS))
def test_layouts(tmp_path, dataset):
    paths, listings, want = LAYOUTS[dataset]
    for rel in paths:
        U.touch(tmp_path / rel)
    for rel, content in listings.items():
        (tmp_path / rel).write_text(content, encoding="utf-8")
    assert {(v.split, v.source, v.video_id, v.label) for v in L.list_videos(dataset, tmp_path)} == want


def test_layout_ffpp(tmp_path, capsys):
    U.ffpp_tree(tmp_path)
    U.touch(tmp_path / "original_sequences/youtube/c23/videos/999.mp4")  # in no split: left out
    by = {(v.source, v.video_id): (v.split, v.label, v.mask is not None)
          for v in L.list_videos("ff++", tmp_path)}
    assert len(by) == 6 + 4 * 3 and by[("youtube", "003")] == ("val", 0, False)
    assert by[("youtube", "005")] == ("test", 0, False) and by[("Deepfakes", "001_000")] == ("train", 1, True)
    assert "12 videos" in capsys.readouterr().err  # listed, not downloaded: one warning line
    other = tmp_path / "elsewhere"  # --splits DIR
    other.mkdir()
    for s in ("train", "val", "test"):
        shutil.move(str(tmp_path / f"{s}.json"), other / f"{s}.json")
    with pytest.raises(L.LayoutError):
        L.list_videos("ff++", tmp_path)
    assert len(L.list_videos("ff++", tmp_path, splits_dir=str(other))) == 18
    with pytest.raises(L.LayoutError, match="c23"):  # c40 asked for: says what is there
        L.list_videos("ff++", tmp_path, "c40", splits_dir=str(other))


def test_two_files_never_share_a_folder(tmp_path):
    for rel in ("fake/a__b.mp4", "fake/a/b.mp4", "fake/c/b.mp4"):
        U.touch(tmp_path / rel)
    with pytest.raises(L.LayoutError, match="a__b.mp4"):
        L.list_videos("folder", tmp_path)


@pytest.mark.parametrize("dataset", L.DATASETS)
def test_wrong_root_says_what_is_there(tmp_path, dataset):
    (tmp_path / "holiday_photos").mkdir()
    with pytest.raises(L.LayoutError) as e:
        L.list_videos(dataset, tmp_path)
    assert "holiday_photos" in str(e.value) and "\n" not in str(e.value)


LISTING_ERRORS = [  # (dataset, listing file content, the line or entry it names)
    ("cdfv2", "Celeb-real/a.mp4 1\n0 Celeb-synthesis/b.mp4\n", "line 1"),   # columns swapped
    ("cdfv2", "1 Celeb-real/a.mp4\n\n2 Celeb-synthesis/b.mp4\n", "line 3"),  # label not 0/1
    ("cdfv2", "1 Celeb-real/a.mp4\n1 Celeb-synthesis/b.mp4\n", "line 2"),   # real/fake reversed
    ("cdfv2", "1 Celeb-real/a.mp4\n1 YouTube-real/zzz.mp4\n", "line 2"),    # listed, not on disk
    ("cdfv2", "\n", ""),
    ("dfdc", "filename,label\na.mp4,1\nb.mp4,fake\n", "line 3"),
    ("dfdc", "filename,is_fake\na.mp4,1\n", "line 1"),
    ("dfdcp", {"original_videos/a.mp4": {"label": "maybe", "set": "test"}}, "original_videos/a.mp4"),
    ("dfdcp", {"method_A/gone.mp4": {"label": "fake", "set": "train"}}, "method_A/gone.mp4"),
    ("dfdcp", ["original_videos/a.mp4"], ""),
    ("ff++", [["002", "003"], ["004", "7"]], "entry 2"),
    ("ff++", [["002", "003"], ["000", "009"]], "entry 2"),  # an id of train.json
    ("ff++", {"002": "003"}, ""),
    ("ff++", '[["002"', ""),
]


@pytest.mark.parametrize("dataset,content,where", LISTING_ERRORS)
def test_listing_files_checked_row_by_row(tmp_path, dataset, content, where):
    """A bad row stops the listing in one line naming file and row: no video moves split silently."""
    listing = tmp_path / U.listing_tree(tmp_path, dataset)
    listing.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(L.LayoutError) as e:
        L.list_videos(dataset, tmp_path)
    assert "\n" not in str(e.value) and str(listing) in str(e.value) and where in str(e.value)


# ----------------------------------------------------------------------------- what evaluate.py reads

def test_list_inputs_names_unique_crops_folders(tmp_path):
    folder = tmp_path / "in"
    for name in ("a.png", "a.jpg", "sub/a.mp4", "notes.txt"):
        U.touch(folder / name)
    single = U.touch(tmp_path / "one" / "a.mp4")
    inputs = L.list_inputs([str(single)], str(folder))
    assert [(p.relative_to(tmp_path).as_posix(), name) for p, name in inputs] == \
        [("one/a.mp4", "a"), ("in/a.jpg", "a~2"), ("in/a.png", "a~3"), ("in/sub/a.mp4", "sub/a")]
    U.touch(tmp_path / "text" / "notes.txt")
    for files, input_dir, named in (([str(folder)], None, str(folder)),
                                    ([str(tmp_path / "nope.mp4")], None, "nope.mp4"),
                                    ([], str(single), str(single)), ([], str(tmp_path / "text"), "text")):
        with pytest.raises(OSError) as e:
            L.list_inputs(files, input_dir)
        assert named in str(e.value)


def test_load_splits_lists_missing_and_broken_datasets(tmp_path, make_split):
    make_split(tmp_path, "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "b", [0, 1])])
    make_split(tmp_path, "dfd", [("actors", 0, "a", [0])])
    (tmp_path / "dfd" / "test" / "index.csv").write_text("video_id\na\n")
    videos, found, missing, failed = L.load_splits(tmp_path, ["cdfv2", "dfd", "ffiw"], "test")
    assert list(videos) == ["cdfv2"] and [len(v.frames) for v in videos["cdfv2"]] == [1, 2]
    assert found == {"cdfv2": tmp_path / "cdfv2" / "test", "dfd": tmp_path / "dfd" / "test", "ffiw": None}
    assert missing == ["ffiw"] and "index.csv" in failed["dfd"]
    for names in (["dfd"], ["ffiw", "dsv1"]):  # none usable: why, in one line
        with pytest.raises(L.DataError) as e:
            L.load_splits(tmp_path, names, "test")
        assert names[0] in str(e.value) and "\n" not in str(e.value)
