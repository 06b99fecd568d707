"""Tests for layouts.py: the datasets' official layouts, their listing files checked row by row,
and the one-line errors for a wrong --root."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import _video_utils as U
from util import layouts as L
import preprocess as P
from util import files


def test_layout_ffpp(tmp_path):
    U.ffpp_tree(tmp_path)
    U.touch(tmp_path / "original_sequences/youtube/c23/videos/999.mp4")  # in no split
    vids = L.list_videos("ff++", tmp_path)
    by = {(v.source, v.video_id): v for v in vids}
    assert len(vids) == 6 + 4 * 3
    assert by[("youtube", "000")].label == 0 and by[("youtube", "000")].split == "train"
    assert by[("youtube", "003")].split == "val" and by[("youtube", "005")].split == "test"
    assert by[("Deepfakes", "001_000")].split == "train" and by[("Deepfakes", "001_000")].label == 1
    assert by[("NeuralTextures", "004_005")].split == "test"
    assert by[("FaceSwap", "000_001")].mask is not None and by[("youtube", "000")].mask is None
    # --splits DIR elsewhere; compression c40 in its own tree
    other = tmp_path / "elsewhere"
    other.mkdir()
    for s in ("train", "val", "test"):
        shutil.move(str(tmp_path / f"{s}.json"), other / f"{s}.json")
    with pytest.raises(L.LayoutError, match="split files"):
        L.list_videos("ff++", tmp_path)
    assert len(L.list_videos("ff++", tmp_path, splits_dir=str(other))) == 18
    # asked for c40 where only c23 exists: the error says what is there
    with pytest.raises(L.LayoutError, match=r"expected original_sequences/youtube/c40.*c23/"):
        L.list_videos("ff++", tmp_path, "c40", splits_dir=str(other))
    assert L.output_name("ff++", "c40") == "ff++-c40" and L.output_name("ff++") == "ff++"


def test_layout_dfd(tmp_path):
    for i in range(3):
        U.touch(tmp_path / f"original_sequences/actors/c23/videos/01__scene{i}.mp4")
    U.touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__scene0__AB.mp4")
    U.touch(tmp_path / "manipulated_sequences/DeepFakeDetection/masks/videos/01_02__scene0__AB.mp4")
    vids = L.list_videos("dfd", tmp_path)
    assert sorted((v.source, v.label, v.split) for v in vids) == \
        [("DeepFakeDetection", 1, "test")] + [("actors", 0, "test")] * 3
    assert [v.mask for v in vids if v.label][0] is not None


def test_layout_cdfv2(tmp_path):
    for f in ("Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "YouTube-real/00000.mp4",
              "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id0_id1_0001.mp4"):
        U.touch(tmp_path / f)
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0001.mp4\n1 YouTube-real/00000.mp4\n")
    by = {(v.source, v.video_id): v for v in L.list_videos("cdfv2", tmp_path)}
    assert len(by) == 5
    real = by[("Celeb-real", "id0_0000")]
    assert (real.split, real.label) == ("test", 0)
    assert by[("Celeb-real", "id0_0001")].split == "train"
    assert (by[("Celeb-synthesis", "id0_id1_0001")].split,
            by[("Celeb-synthesis", "id0_id1_0001")].label) == ("test", 1)
    assert by[("YouTube-real", "00000")].split == "test"


def test_layout_dfdc(tmp_path):
    for n in ("aaa.mp4", "bbb.mp4", "ccc.mp4"):
        U.touch(tmp_path / "test" / "videos" / n)
    (tmp_path / "test" / "labels.csv").write_text(  # with the byte-order mark Excel writes
        "filename,label\naaa.mp4,1\nbbb.mp4,0\nccc.mp4,1\n", encoding="utf-8-sig")
    vids = L.list_videos("dfdc", tmp_path)
    assert sorted((v.video_id, v.label, v.source, v.split) for v in vids) == [
        ("aaa", 1, "fake", "test"), ("bbb", 0, "real", "test"), ("ccc", 1, "fake", "test")]
    assert len(L.list_videos("dfdc", tmp_path / "test")) == 3  # root = the test folder itself


def test_layout_dfdcp(tmp_path):
    entries = {"method_A/1/1_A/111_1_A.mp4": {"label": "fake", "set": "test"},
               "method_B/2/2_B/222_2_B.mp4": {"label": "fake", "set": "train"},
               "original_videos/1/1_A.mp4": {"label": "real", "set": "test"},
               "original_videos/2/2_B.mp4": {"label": "real", "set": "train"}}
    for rel in entries:
        U.touch(tmp_path / rel)
    (tmp_path / "dataset.json").write_text(json.dumps(entries))
    vids = L.list_videos("dfdcp", tmp_path)
    assert sorted((v.source, v.video_id, v.label, v.split) for v in vids) == [
        ("method_A", "111_1_A", 1, "test"), ("method_B", "222_2_B", 1, "train"),
        ("original_videos", "1_A", 0, "test"), ("original_videos", "2_B", 0, "train")]


def test_layout_ffiw(tmp_path):
    for split in ("train", "val"):
        U.touch(tmp_path / "FFIW10K-v1-release" / "source" / split / "00001.mp4")
        U.touch(tmp_path / "FFIW10K-v1-release" / "target" / split / "00001.mp4")
    U.touch(tmp_path / "FFIW10K-v1-release-test" / "source" / "test" / "00002.mp4")
    U.touch(tmp_path / "FFIW10K-v1-release-test" / "target" / "test" / "00002.mp4")
    vids = L.list_videos("ffiw", tmp_path)
    assert sorted((v.split, v.source, v.label) for v in vids) == [
        ("test", "source", 0), ("test", "target", 1), ("train", "source", 0),
        ("train", "target", 1), ("val", "source", 0), ("val", "target", 1)]
    # the release folder itself as root works too
    assert len(L.list_videos("ffiw", tmp_path / "FFIW10K-v1-release")) == 4


def test_layout_dsv1_and_folder(tmp_path):
    ds = tmp_path / "ds"
    U.touch(ds / "train" / "real" / "a" / "x.mp4")
    U.touch(ds / "train" / "fake-lipsync" / "x.mp4")
    U.touch(ds / "test" / "real" / "y.mp4")
    U.touch(ds / "test" / "fake-faceswap" / "m1" / "y.mp4")
    U.touch(ds / "test" / "fake-faceswap" / "m2" / "y.mp4")  # same stem: ids must differ
    vids = L.list_videos("dsv1", ds)
    assert sorted((v.split, v.source, v.video_id, v.label) for v in vids) == [
        ("test", "fake-faceswap", "m1__y", 1), ("test", "fake-faceswap", "m2__y", 1),
        ("test", "real", "y", 0), ("train", "fake-lipsync", "x", 1), ("train", "real", "x", 0)]
    folder = tmp_path / "mine"
    U.touch(folder / "my_real_clips" / "a.mp4")
    U.touch(folder / "generated" / "b.avi")
    U.touch(folder / "generated" / "c.png")
    U.touch(folder / "generated" / "notes.txt")
    vids = L.list_videos("folder", folder)
    assert sorted((v.split, v.source, v.video_id, v.label) for v in vids) == [
        ("test", "generated", "b", 1), ("test", "generated", "c", 1),
        ("test", "my_real_clips", "a", 0)]


def test_layout_same_stem_never_shares_a_folder(tmp_path):
    """clip.mp4 and clip.png of one source get their own folders; a folder named test inside
    a `folder` dataset is a source (folder has no splits); ids that would still collide stop
    the listing instead of overwriting each other's crops."""
    U.touch(tmp_path / "fake" / "clip.mp4")
    U.touch(tmp_path / "fake" / "clip.png")
    U.touch(tmp_path / "test" / "x.mp4")
    vids = L.list_videos("folder", tmp_path)
    assert sorted((v.split, v.source, v.video_id) for v in vids) == [
        ("test", "fake", "clip.mp4"), ("test", "fake", "clip.png"), ("test", "test", "x")]
    U.touch(tmp_path / "fake" / "a__b.mp4")
    U.touch(tmp_path / "fake" / "a" / "b.mp4")
    U.touch(tmp_path / "fake" / "c" / "b.mp4")
    with pytest.raises(L.LayoutError, match="would both be written to test/fake/a__b.mp4"):
        L.list_videos("folder", tmp_path)


MALFORMED = {  # a listing file that is not what it should be, and the error that names it
    "ff++": ('[["002"]]', r"val.json entry 1: expected a pair of 3-digit ids"),
    "cdfv2": ("Celeb-real/a.mp4\n", r"List_of_testing_videos.txt line 1: expected `<label> <folder>/<file>.mp4`"),
    "dfdc": ("filename,is_fake\na.mp4,1\n", r"labels.csv line 1: expected the columns filename,label"),
    "dfdcp": ('{"a.mp4": {"label": "fake"', r"dataset.json is not "),
}


@pytest.mark.parametrize("dataset", list(MALFORMED))
def test_malformed_listing_file_is_one_error(tmp_path, dataset):
    """A broken split/label file names itself (and the line or entry) and what it should hold
    (no traceback)."""
    content, bad = MALFORMED[dataset]
    (tmp_path / U.listing_tree(tmp_path, dataset)).write_text(content)
    with pytest.raises(L.LayoutError, match=bad):
        L.list_videos(dataset, tmp_path)
    with pytest.raises(SystemExit, match=f"^error: .*{bad}"):
        P.main(["--dataset", dataset, "--root", str(tmp_path), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("dataset", L.DATASETS)
def test_wrong_root_says_expected_and_found(tmp_path, dataset):
    (tmp_path / "holiday_photos").mkdir()
    with pytest.raises(L.LayoutError) as e:
        L.list_videos(dataset, tmp_path)
    msg = str(e.value)
    assert "expected" in msg and "found" in msg and "holiday_photos" in msg, msg
    with pytest.raises(SystemExit, match="expected"):
        P.main(["--dataset", dataset, "--root", str(tmp_path), "--out", str(tmp_path / "o")])


DFDCP_OK = {"original_videos/a.mp4": {"label": "real", "set": "test"}}
LISTING_ERRORS = [  # (dataset, listing file content, the error it must give)
    ("cdfv2", "Celeb-real/a.mp4 1\n0 Celeb-synthesis/b.mp4\n",   # columns swapped
     r"List_of_testing_videos.txt line 1: expected `<label> <folder>/<file>.mp4` with label 0 or 1"
     r".*got 'Celeb-real/a.mp4 1'"),
    ("cdfv2", "1 Celeb-real/a.mp4\n\n2 Celeb-synthesis/b.mp4\n",  # label not 0/1 (line 3)
     r"List_of_testing_videos.txt line 3: expected .* got '2 Celeb-synthesis/b.mp4'"),
    ("cdfv2", "1 Celeb-real/a.mp4\n1 Celeb-synthesis/b.mp4\n",   # real/fake reversed
     r"line 2: label 1 for a Celeb-synthesis video, expected 0 \(in this file 1 = real"),
    ("cdfv2", "1 Celeb-real/a.mp4\n1 YouTube-real/zzz.mp4\n",    # listed, not on disk
     r"List_of_testing_videos.txt line 2: .*YouTube-real/zzz.mp4 does not exist"),
    ("cdfv2", "1 Celeb-real/a.mp4\n1 Other-real/a.mp4\n", r"line 2: expected"),
    ("cdfv2", "\n", r"List_of_testing_videos.txt lists no video"),
    ("dfdc", "filename,label\na.mp4,1\nb.mp4,fake\n",
     r"labels.csv line 3: expected `<file>.mp4,<label>` with label 0 \(real\) or 1 \(fake\), "
     r"got 'b.mp4,fake'"),
    ("dfdc", "filename,label\n,1\n", r"labels.csv line 2: expected"),
    ("dfdc", "label,filename\n1,a.mp4\n2,b.mp4\n", r"labels.csv line 3: .*got '2,b.mp4'"),
    ("dfdcp", {**DFDCP_OK, "method_A/b.mp4": {"label": "maybe", "set": "test"}},
     r'dataset.json entry "method_A/b.mp4": expected \{"label": "real"\|"fake", "set": '
     r'"train"\|"test", ...\}, got \{"label": "maybe"'),
    ("dfdcp", {**DFDCP_OK, "method_A/b.mp4": {"label": "fake", "set": "validation"}},
     r'entry "method_A/b.mp4": expected'),
    ("dfdcp", {**DFDCP_OK, "method_A/gone.mp4": {"label": "fake", "set": "train"}},
     r'entry "method_A/gone.mp4": .*method_A/gone.mp4 does not exist'),
    ("dfdcp", ["original_videos/a.mp4"], r"dataset.json is not a JSON object"),
    ("ff++", [["002", "003"], ["004", "7"]],
     r'val.json entry 2: expected a pair of 3-digit ids such as \["953", "974"\], got \["004", "7"\]'),
    ("ff++", [["002", "003"], "004_005"], r"val.json entry 2: expected a pair"),
    ("ff++", [["002", "003"], ["000", "009"]], r"val.json entry 2: id 000 is in train.json too"),
    ("ff++", {"002": "003"}, r"val.json: expected a JSON list"),
]


@pytest.mark.parametrize("dataset,content,error", LISTING_ERRORS)
def test_listing_files_checked_row_by_row(tmp_path, dataset, content, error):
    """Every row of a listing file parses or the listing stops with its file and line (entry
    for JSON): a swapped or foreign file never silently moves videos to another split."""
    listing = tmp_path / U.listing_tree(tmp_path, dataset)
    listing.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(L.LayoutError, match=error) as e:
        L.list_videos(dataset, tmp_path)
    assert "\n" not in str(e.value) and str(listing) in str(e.value)


def test_missing_listed_videos_warn_for_dfdc_and_ffpp(tmp_path, capsys):
    """DFDC comes in parts and FF++ is often downloaded in parts: listed videos that are not
    on disk are left out with one warning line (Celeb-DF-v2 and DFDC-Preview stop instead)."""
    U.listing_tree(tmp_path / "dfdc", "dfdc")
    (tmp_path / "dfdc" / "test" / "labels.csv").write_text(
        "filename,label\na.mp4,1\nb.mp4,0.0\nzzz.mp4,1\n")
    vids = L.list_videos("dfdc", tmp_path / "dfdc")
    assert sorted((v.video_id, v.label) for v in vids) == [("a", 1), ("b", 0)]
    err = capsys.readouterr().err
    assert "warning: dfdc: 1 videos listed in" in err and "(e.g. zzz.mp4)" in err
    U.ffpp_tree(tmp_path / "ffpp")
    assert len(L.list_videos("ff++", tmp_path / "ffpp")) == 18
    err = capsys.readouterr().err  # 002_003, 003_002, 005_004 of each of the 4 methods
    assert "warning: ff++: 12 videos listed in the split files not found" in err
    assert err.count("\n") == 1


def test_atomic_write_concurrent_names(tmp_path, monkeypatch):
    """Two writers of one file use different temporary files; a failed write leaves the old
    file whole and no temporary file."""
    import errno
    import os
    target = tmp_path / "index.csv"
    files.atomic_write(target, "old\n")
    names = []
    real_open = open

    def full_disk(path, mode="r", *args, **kw):
        names.append(Path(path).name)
        fh = real_open(path, mode, *args, **kw)
        if "x" in mode:
            fh.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return fh
    monkeypatch.setattr("builtins.open", full_disk)
    for _ in range(2):
        with pytest.raises(OSError) as e:
            files.atomic_write(target, "new\n")
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["index.csv"]
    assert len(set(names)) == 2 and all(n.startswith(".index.csv.") for n in names)


# ----------------------------------------------------------------------------- what evaluate.py reads

def test_list_inputs_names_unique_crops_folders(tmp_path, capsys):
    folder = tmp_path / "in"
    for name in ("a.png", "a.jpg", "sub/a.mp4", "notes.txt"):
        U.touch(folder / name)
    single = U.touch(tmp_path / "one" / "a.mp4")
    inputs = L.list_inputs([str(single)], str(folder))
    assert [(p.relative_to(tmp_path).as_posix(), name) for p, name in inputs] == \
        [("one/a.mp4", "a"), ("in/a.jpg", "a~2"), ("in/a.png", "a~3"), ("in/sub/a.mp4", "sub/a")]
    assert f"--input {folder}: 3 video/image file(s), 1 other file(s) skipped" in capsys.readouterr().out
    U.touch(tmp_path / "text" / "notes.txt")
    cases = [(([str(folder)], None), IsADirectoryError, "is a folder, not a file: use --input"),
             (([str(tmp_path / "nope.mp4")], None), FileNotFoundError, "nope.mp4: file not found"),
             (([], str(single)), NotADirectoryError, "not a folder"),
             (([], str(tmp_path / "text")), FileNotFoundError, "no video or image file")]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            L.list_inputs(*args)


def test_load_splits_lists_missing_and_broken_datasets(tmp_path, make_split):
    make_split(tmp_path, "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "b", [0, 1])])
    make_split(tmp_path, "dfd", [("actors", 0, "a", [0])])
    (tmp_path / "dfd" / "test" / "index.csv").write_text("video_id\na\n")
    videos, found, missing, failed = L.load_splits(tmp_path, ["cdfv2", "dfd", "ffiw"], "test")
    assert list(videos) == ["cdfv2"] and [len(v.frames) for v in videos["cdfv2"]] == [1, 2]
    assert found == {"cdfv2": tmp_path / "cdfv2" / "test", "dfd": tmp_path / "dfd" / "test", "ffiw": None}
    assert missing == ["ffiw"] and "not an index written by preprocess.py" in failed["dfd"]
    with pytest.raises(L.DataError, match="not an index written by preprocess.py"):
        L.load_splits(tmp_path, ["dfd"], "test")  # none usable: why
    with pytest.raises(L.DataError, match="none of ffiw, dsv1 is preprocessed in"):
        L.load_splits(tmp_path, ["ffiw", "dsv1"], "test")
