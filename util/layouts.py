"""The datasets: their official folder layouts, read into lists of videos (split, source,
label), and the layout preprocess.py writes for data.py, train.py and evaluate.py to read:

    <data>/<dataset>/<split>/index.csv                       video_id,source,label,n_frames,path,file
    <data>/<dataset>/<split>/<source>/<video_id>/<frame>.png  aligned 256x256 face crops (+ meta.json)
    <data>/<dataset>/failures.csv                            videos without a usable face

No face detection and no torch here: preprocess.py (dlib) and data.py (torch) both build on it.
Problems with a dataset folder raise LayoutError, with preprocessed data DataError; each names
the file, says what is wrong and what to run.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.files import atomic_write, csv_text

DATASETS = ("ff++", "dfd", "cdfv2", "dfdc", "dfdcp", "ffiw", "dsv1", "folder")
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# FF++ manipulation methods and the short names tables use; the paper trains on the first four
FFPP_METHODS = {"Deepfakes": "DF", "Face2Face": "F2F", "FaceSwap": "FS", "NeuralTextures": "NT",
                "FaceShifter": "FSh"}
# the paper's training set: the real videos (youtube) and the first four methods
FFPP_SOURCES = ("youtube", *list(FFPP_METHODS)[:4])

# where `python preprocess.py` (no arguments) looks, and where to get each dataset
DEFAULT_ROOTS = {
    "ff++": ["datasets/FaceForensics++"],
    "dfd": ["datasets/FaceForensics++", "datasets/DFD"],
    "cdfv2": ["datasets/Celeb-DF-v2"],
    "dfdc": ["datasets/DFDC"],
    "dfdcp": ["datasets/DFDC-Preview"],
    "ffiw": ["datasets/FFIW10K"],
    "dsv1": ["datasets/DeepSpeak-v1"],
    "folder": ["datasets/folder"],
}
WHERE_TO_GET = {
    "ff++": "FaceForensics++: request access at https://github.com/ondyari/FaceForensics "
            "(download script: -d all -c c23 -t videos, and -t masks)",
    "dfd": "DeepFakeDetection (DFD): same FaceForensics++ download script, "
           "-d DeepFakeDetection_original and -d DeepFakeDetection (-t videos, -t masks)",
    "cdfv2": "Celeb-DF v2: request form at https://github.com/yuezunli/celeb-deepfakeforensics",
    "dfdc": "DFDC public test set: https://ai.meta.com/datasets/dfdc/ "
            "(or Kaggle 'deepfake-detection-challenge')",
    "dfdcp": "DFDC Preview: https://ai.meta.com/datasets/dfdc/ (preview dataset)",
    "ffiw": "FFIW10K: request at https://github.com/tfzhou/FFIW",
    "dsv1": "DeepSpeak v1: https://huggingface.co/datasets/faridlab/deepspeak_v1 (accept terms)",
    "folder": "your own videos/images: datasets/folder/<source>/... "
              "('real' in a source name = real)",
}


@dataclass
class Video:
    """One video (or image) of a dataset: where it is and, once preprocessed, its face crops."""
    split: str
    source: str                # the folder it comes from: youtube, Deepfakes, Celeb-real, ...
    video_id: str
    label: int                 # 0 real, 1 fake
    file: Path | str           # the video: in the dataset, or from index.csv relative to its root
    mask: Path | None = None   # manipulation mask video (FF++/DFD), when present
    frames: list[Path] = field(default_factory=list)  # crops <frame>.png, by frame index

    @property
    def path(self) -> str:
        """The crop folder below the split folder."""
        return f"{self.source}/{self.video_id}"


class LayoutError(ValueError):
    """--root does not hold the dataset's official layout."""


class DataError(ValueError):
    """Preprocessed data that cannot be used as it is (one-line reason and what to run)."""


# ----------------------------------------------------------------------------- official layouts


def _listing(path: Path) -> str:
    """What is actually at `path` (up to 12 names), for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" ... ({len(names)} entries)" if len(names) > 12 else ""
    return f"{path} contains: " + (", ".join(names[:12]) + more if names else "nothing")


def _deepest(root: Path, rel: str) -> Path:
    """The deepest existing folder along root/rel (where the expected layout stops)."""
    path = root
    for part in Path(rel).parts:
        if not (path / part).is_dir():
            break
        path = path / part
    return path


def _layout_error(dataset: str, root: Path, expected: str, probe: str = "") -> LayoutError:
    found = _listing(_deepest(root, probe) if probe else root)
    return LayoutError(f"--root {root} is not a {dataset} folder: expected {expected}; "
                       f"found: {found}")


@contextlib.contextmanager
def _reading(path: Path, expected: str, error: type[ValueError] = LayoutError):
    """A malformed file (split files, labels.csv, dataset.json, index.csv) -> one error naming
    the file and what it should hold, instead of a traceback from deep in the parser."""
    try:
        yield
    except (LayoutError, DataError):
        raise  # already says which line is wrong
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, csv.Error) as e:
        raise error(f"{path} is not {expected} ({type(e).__name__}: {e})") from None


def _media(folder: Path, recursive: bool = True, images: bool = False) -> list[Path]:
    exts = VIDEO_EXTS | (IMAGE_EXTS if images else set())
    files = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in files if p.suffix.lower() in exts and p.is_file()
                  and not p.name.startswith("."))


def _uniquify(videos: list[Video], roots: dict[str, Path]) -> list[Video]:
    """Video ids are file stems; where files of one split/source share a stem, their path
    below the source folder ('__' for '/') is used instead, with the extension where even that
    is shared (clip.mp4 and clip.png): one output folder per file, none overwritten."""
    for keep_suffix in (False, True):
        count = Counter((v.split, v.source, v.video_id) for v in videos)
        for v in videos:
            if count[(v.split, v.source, v.video_id)] > 1:
                rel = v.file.relative_to(roots[v.source])
                v.video_id = "__".join((rel if keep_suffix else rel.with_suffix("")).parts)
    return videos


def _check_unique(videos: list[Video]) -> list[Video]:
    """Two files with one output folder would overwrite each other's crops: stop instead."""
    first: dict[tuple[str, str, str], Path] = {}
    for v in videos:
        other = first.setdefault((v.split, v.source, v.video_id), v.file)
        if other != v.file:
            raise LayoutError(f"{other} and {v.file} would both be written to "
                              f"{v.split}/{v.source}/{v.video_id}; rename one of them")
    return videos


def _short(value) -> str:
    """A value from a listing file as it reads there, cut to 80 characters for an error message."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _ffpp_pairs(path: Path) -> list[tuple[str, str]]:
    """One official FF++ split file: a JSON list of [target, source] pairs of 3-digit ids."""
    with _reading(path, 'a JSON list of ["target", "source"] id pairs'):
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f'{path}: expected a JSON list of ["target", "source"] pairs of '
                          f"3-digit ids (the official split file), got {_short(entries)}")
    for i, pair in enumerate(entries, 1):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) and re.fullmatch(r"\d{3}", x) for x in pair)):
            raise LayoutError(f'{path} entry {i}: expected a pair of 3-digit ids such as '
                              f'["953", "974"], got {_short(pair)}')
    return [tuple(pair) for pair in entries]


def _ffpp_splits(root: Path, splits_dir: str | None) -> dict[str, str]:
    """Official FF++ split files -> {video id (real 'NNN' or fake 'NNN_MMM'): split}. An id in
    two split files stops the listing (a test video in train would go unnoticed)."""
    dirs = [Path(splits_dir)] if splits_dir else \
        [root, root / "splits", root / "dataset" / "splits"] + \
        [Path(p).parent for p in sorted(glob.glob(str(root / "*" / "*" / "train.json")))]
    for d in dirs:
        if all((d / f"{s}.json").is_file() for s in ("train", "val", "test")):
            break
    else:
        where = splits_dir or f"{root} (or {root}/splits)"
        raise LayoutError(
            f"FF++ split files train.json, val.json, test.json not found in {where}; get them "
            "from https://github.com/ondyari/FaceForensics/tree/master/dataset/splits and put "
            "them there or pass --splits DIR")
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = d / f"{split}.json"
        for i, (a, b) in enumerate(_ffpp_pairs(path), 1):
            for vid in (a, b):
                other = split_of.setdefault(vid, split)
                if other != split:
                    raise LayoutError(f"{path} entry {i}: id {vid} is in {other}.json too; "
                                      "the official split files never share an id")
            split_of.update({f"{a}_{b}": split, f"{b}_{a}": split})
    return split_of


def _warn_missing(dataset: str, missing: list, where: str) -> None:
    if missing:
        print(f"warning: {dataset}: {len(missing)} videos listed in {where} not found, left "
              f"out (e.g. {missing[0]})", file=sys.stderr)


def _list_ffpp(root: Path, c: str, splits_dir: str | None) -> list[Video]:
    real = root / "original_sequences" / "youtube" / c / "videos"
    expected = (f"original_sequences/youtube/{c}/videos/*.mp4 and "
                f"manipulated_sequences/{{{','.join(FFPP_SOURCES[1:])}}}/{c}/videos/*.mp4")
    if not real.is_dir():
        raise _layout_error("FaceForensics++", root, expected,
                            f"original_sequences/youtube/{c}/videos")
    split_of = _ffpp_splits(root, splits_dir)
    videos, missing = [], []
    for source in ("youtube", *FFPP_METHODS):
        base = root / ("original_sequences" if source == "youtube" else "manipulated_sequences")
        folder = base / source / c / "videos"
        masks = base / source / "masks" / "videos"
        found = {f.stem: f for f in _media(folder, recursive=False)}
        for f in found.values():
            if f.stem in split_of:
                mask = masks / f.name
                videos.append(Video(split_of[f.stem], source, f.stem, int(source != "youtube"),
                                    f, mask if mask.is_file() else None))
        # a method not downloaded at all is no gap; missing files of a downloaded one are
        if folder.is_dir():
            listed = [i for i in split_of if ("_" in i) == (source != "youtube")]
            missing += [folder / f"{i}.mp4" for i in listed if i not in found]
    if not any(v.label for v in videos):
        raise _layout_error("FaceForensics++", root, expected, "manipulated_sequences")
    _warn_missing("ff++", missing, "the split files")
    return videos


def _list_dfd(root: Path, c: str) -> list[Video]:
    expected = (f"original_sequences/actors/{c}/videos/*.mp4 and "
                f"manipulated_sequences/DeepFakeDetection/{c}/videos/*.mp4")
    videos = []
    for source, base in (("actors", "original_sequences"),
                         ("DeepFakeDetection", "manipulated_sequences")):
        folder = root / base / source / c / "videos"
        if not folder.is_dir():
            raise _layout_error("DFD", root, expected, f"{base}/{source}/{c}/videos")
        masks = root / base / source / "masks" / "videos"
        for f in _media(folder, recursive=False):
            mask = masks / f.name
            videos.append(Video("test", source, f.stem, int(source != "actors"), f,
                                mask if mask.is_file() else None))
    return videos


CDFV2_SOURCES = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}


def _cdfv2_test_list(listing: Path, root: Path) -> set[str]:
    """List_of_testing_videos.txt, checked line by line: `<label> <folder>/<file>.mp4`, where
    this file's label is 1 = real, 0 = fake (the reverse of ours). A file with swapped columns
    would otherwise match no video and silently put every video in train."""
    expected = ("expected `<label> <folder>/<file>.mp4` with label 0 or 1 and folder "
                f"{', '.join(CDFV2_SOURCES)}")
    with _reading(listing, "lines '<1|0> <folder>/<file>.mp4'"):
        lines = listing.read_text(encoding="utf-8-sig").splitlines()
    test = set()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        folder = Path(parts[-1]).parts[0] if len(Path(parts[-1]).parts) == 2 else None
        if len(parts) != 2 or parts[0] not in ("0", "1") or folder not in CDFV2_SOURCES:
            raise LayoutError(f"{listing} line {n}: {expected}, got {_short(line.strip())!r}")
        want = 1 - CDFV2_SOURCES[folder]
        if int(parts[0]) != want:
            raise LayoutError(f"{listing} line {n}: label {parts[0]} for a {folder} video, "
                              f"expected {want} (in this file 1 = real, 0 = fake)")
        if not (root / parts[1]).is_file():
            raise LayoutError(f"{listing} line {n}: {root / parts[1]} does not exist; complete "
                              "the Celeb-DF-v2 download (or point --root at its folder)")
        test.add(parts[1])
    if not test:
        raise LayoutError(f"{listing} lists no video; {expected}, one per test video")
    return test


def _list_cdfv2(root: Path) -> list[Video]:
    listing = root / "List_of_testing_videos.txt"
    expected = "Celeb-real/, Celeb-synthesis/, YouTube-real/ and List_of_testing_videos.txt"
    if not listing.is_file() or not all((root / s).is_dir() for s in CDFV2_SOURCES):
        raise _layout_error("Celeb-DF-v2", root, expected)
    test = _cdfv2_test_list(listing, root)
    videos = []
    for source, label in CDFV2_SOURCES.items():
        for f in _media(root / source, recursive=False):
            rel = f"{source}/{f.name}"
            videos.append(Video("test" if rel in test else "train", source, f.stem, label, f))
    return videos


def _dfdc_labels(labels: Path) -> list[tuple[str, int]]:
    """labels.csv, checked row by row: (file name, label 1 = fake / 0 = real) per row."""
    expected = "expected `<file>.mp4,<label>` with label 0 (real) or 1 (fake)"
    with _reading(labels, "a CSV with columns filename,label (label 1 = fake, 0 = real)"), \
            open(labels, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if "filename" not in header or "label" not in header:
            raise LayoutError(f"{labels} line 1: expected the columns filename,label (label "
                              f"1 = fake, 0 = real), got {_short(','.join(header))!r}")
        i, j = header.index("filename"), header.index("label")
        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            name = row[i].strip() if len(row) > i else ""
            label = row[j].strip() if len(row) > j else ""
            if not name or label not in ("0", "1", "0.0", "1.0"):
                raise LayoutError(f"{labels} line {reader.line_num}: {expected}, "
                                  f"got {_short(','.join(row))!r}")
            rows.append((name, int(float(label))))
    return rows


def _list_dfdc(root: Path) -> list[Video]:
    """DFDC test set. Videos of labels.csv that are not on disk are left out with a warning, not
    an error: the test set comes in parts, and a missing part is common."""
    test = root / "test"
    if not (test / "labels.csv").is_file() and (root / "labels.csv").is_file():
        test = root  # --root points at the test folder itself
    labels = test / "labels.csv"
    if not labels.is_file():
        raise _layout_error("DFDC", root, "test/labels.csv (filename,label) and the test "
                            "videos under test/", "test")
    files = {f.name: f for f in _media(test)}
    videos, missing = [], []
    for name, label in _dfdc_labels(labels):
        f = files.get(Path(name).name)
        if f is None:
            missing.append(name)
            continue
        videos.append(Video("test", "fake" if label else "real", f.stem, label, f))
    _warn_missing("dfdc", missing, labels)
    if not videos:
        raise _layout_error("DFDC", root, "the videos listed in test/labels.csv under test/",
                            "test")
    return videos


def _list_dfdcp(root: Path) -> list[Video]:
    index = root / "dataset.json"
    if not index.is_file():
        raise _layout_error("DFDC-Preview", root, "dataset.json and the video folders it "
                            "lists (method_A/, method_B/, original_videos/)")
    expected = '{"label": "real"|"fake", "set": "train"|"test", ...}'
    with _reading(index, f'a JSON object {{"<video path>": {expected}}}'):
        entries = dict(json.loads(index.read_text(encoding="utf-8-sig")).items())
    videos, roots = [], {}
    for rel, info in entries.items():
        if not (isinstance(info, dict) and info.get("label") in ("real", "fake")
                and info.get("set") in ("train", "test")):
            raise LayoutError(f'{index} entry "{rel}": expected {expected}, got {_short(info)}')
        f = root / rel
        if not f.is_file():  # one archive holds them all: a gap is an incomplete download
            raise LayoutError(f'{index} entry "{rel}": {f} does not exist; complete the '
                              "DFDC-Preview download (or point --root at its folder)")
        source = Path(rel).parts[0]
        roots[source] = root / source
        videos.append(Video(info["set"], source, f.stem, int(info["label"] == "fake"), f))
    if not videos:
        raise _layout_error("DFDC-Preview", root, "the videos listed in dataset.json")
    return _uniquify(videos, roots)


def _list_ffiw(root: Path) -> list[Video]:
    """FFIW10K: source/<split>/*.mp4 (real) and target/<split>/*.mp4 (fake); the release
    folders (e.g. FFIW10K-v1-release/, FFIW10K-v1-release-test/) may sit one level down."""
    videos = []
    for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for source, label in (("source", 0), ("target", 1)):
            for split in ("train", "val", "test"):
                for f in _media(base / source / split):
                    videos.append(Video(split, source, f.stem, label, f))
    if not videos:
        raise _layout_error("FFIW10K", root, "source/{train,val,test}/*.mp4 and "
                            "target/{train,val,test}/*.mp4 (or release folders holding them)")
    return videos


def _list_sources(root: Path, name: str, splits: bool, images: bool) -> list[Video]:
    """dsv1: root[/<split>]/<source>/**/<video>; folder: root/<source>/**/<video or image>,
    all test (a source folder named test or train is a source there). 'real' in the source
    name = real."""
    split_dirs = [root / s for s in ("train", "val", "test") if splits and (root / s).is_dir()]
    bases = [(d.name, d) for d in split_dirs] or [("test", root)]
    videos, roots = [], {}
    for split, base in bases:
        for src in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            roots[src.name] = src
            for f in _media(src, images=images):
                videos.append(Video(split, src.name, f.stem, int("real" not in src.name.lower()),
                                    f))
    if not videos:
        where = ", optionally under train/ and test/" if splits else ""
        raise _layout_error(name, root, "<source>/<videos> sub-folders ('real' in a source "
                            f"name = real, anything else fake){where}")
    return _uniquify(videos, roots)


def list_videos(dataset: str, root, compression: str = "c23",
                splits_dir: str | None = None) -> list[Video]:
    """Every video of a dataset in its official layout, with split, source and label.
    Raises LayoutError (one message: what was expected, what was found) for a wrong root."""
    root = Path(root)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise LayoutError(f"--root {root} for {dataset}: expected a folder; "
                          f"found: {_listing(root)}")
    if dataset == "ff++":
        videos = _list_ffpp(root, compression, splits_dir)
    elif dataset == "dfd":
        videos = _list_dfd(root, compression)
    elif dataset == "cdfv2":
        videos = _list_cdfv2(root)
    elif dataset == "dfdc":
        videos = _list_dfdc(root)
    elif dataset == "dfdcp":
        videos = _list_dfdcp(root)
    elif dataset == "ffiw":
        videos = _list_ffiw(root)
    else:  # dsv1 may have train/ and test/ folders; folder is all test and holds images too
        videos = _list_sources(root, dataset, splits=dataset == "dsv1",
                               images=dataset == "folder")
    return _check_unique(videos)


def output_name(dataset: str, compression: str = "c23") -> str:
    """Folder name under --out: ff++ / dfd at another compression go to ff++-c40 etc."""
    return f"{dataset}-{compression}" if dataset in ("ff++", "dfd") and compression != "c23" \
        else dataset


def command_for(name: str, out: str | Path = "data") -> str:
    """The command that writes <out>/<name>, for a folder name as output_name gives it (ff++-c40)."""
    dataset, _, compression = name.partition("-")
    flag = f" --compression {compression}" if compression else ""
    root = DEFAULT_ROOTS.get(dataset, [f"datasets/{dataset}"])[0]
    return f"python preprocess.py --dataset {dataset}{flag} --root {root} --out {out}"


def rel_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def default_roots(name: str, base) -> list[Path]:
    """Where the no-argument mode looks for a dataset (DEFAULT_ROOTS, under `base`)."""
    return [Path(base) / Path(rel).relative_to("datasets") for rel in DEFAULT_ROOTS[name]]


def find_dataset(name: str, base="datasets", compression: str = "c23",
                 splits_dir: str | None = None) -> tuple[Path | None, list[Video], str]:
    """The dataset's usual folder under `base`: (root, its videos, "") when its layout is right,
    else (None, [], why not). The videos are list_videos', so that the caller lists it once."""
    why = ""
    for root in default_roots(name, base):
        if root.is_dir():
            try:
                return root, list_videos(name, root, compression, splits_dir), ""
            except LayoutError as e:
                why = str(e)
    return None, [], why


# ----------------------------------------------------------------------------- preprocessed layout

FAILURE_FIELDS = ["split", "source", "video_id", "file", "reason"]
INDEX_FIELDS = ["video_id", "source", "label", "n_frames", "path", "file"]


def read_failures(path: Path) -> dict[tuple[str, str, str], dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {(r["split"], r["source"], r["video_id"]): r for r in csv.DictReader(fh)}


def write_index(split_dir: Path) -> int:
    """<split>/index.csv from every finished video folder (meta.json, >= 1 crop)."""
    rows = []
    for meta_path in sorted(split_dir.glob("*/*/meta.json")):
        if meta_path.parent.name.startswith("."):
            continue
        m = json.loads(meta_path.read_text())
        if m.get("n_frames", 0) < 1:
            continue
        rows.append({"video_id": m["video_id"], "source": m["source"], "label": m["label"],
                     "n_frames": m["n_frames"], "path": f"{m['source']}/{m['video_id']}",
                     "file": m["file"]})
    atomic_write(split_dir / "index.csv", csv_text(INDEX_FIELDS, rows))
    return len(rows)


def load_videos(data: str | Path = "data", dataset: str = "ff++", split: str = "train",
                sources: tuple[str, ...] | list[str] | None = FFPP_SOURCES,
                max_frames: int | None = 32) -> list[Video]:
    """The videos of one preprocessed split listed in index.csv, restricted to `sources` (None =
    all), each with up to `max_frames` crops (evenly spaced when a folder holds more; None = all).
    DataError (naming the file and the command that writes it) when the split is missing or
    index.csv and the crops disagree."""
    split_dir = Path(data) / dataset / split
    index = split_dir / "index.csv"
    command = command_for(dataset, data)
    if not index.is_file():
        raise DataError(f"no preprocessed data: {index} not found; run `{command}` first "
                        f"(or point --data at the folder that holds {dataset}/{split}/index.csv)")
    with _reading(index, f"an index written by preprocess.py; re-run `{command}`", DataError), \
            open(index, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{index} lists no videos; re-run `{command}`")
    for line, r in enumerate(rows, 2):
        if not set(INDEX_FIELDS[:4]) <= set(r) or r["label"] not in ("0", "1"):
            raise DataError(f"{index} line {line}: not an index written by preprocess.py: expected "
                            f"columns {','.join(INDEX_FIELDS)} with label 0 or 1; re-run `{command}`")
    found = sorted({r["source"] for r in rows})
    if sources is not None:
        missing = [s for s in sources if s not in found]
        if missing:
            raise DataError(f"{index}: no videos of source(s) {missing}; found {found}")
        rows = [r for r in rows if r["source"] in set(sources)]
    videos = []
    for r in rows:
        v = Video(split, r["source"], r["video_id"], int(r["label"]), r.get("file") or "")
        folder = (split_dir / v.path).resolve()
        frames = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not frames:
            raise DataError(f"{index} lists {v.path} but {folder} holds no <frame>.png crops; "
                            f"re-run `{command}`")
        if max_frames is not None and len(frames) > max_frames:
            keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
            frames = [frames[k] for k in keep]
        v.frames = frames
        videos.append(v)
    return videos


# ----------------------------------------------------------------------------- what evaluate.py reads

def layout_help(data: Path, dataset: str, split: str) -> str:
    """Where evaluate.py looks and the preprocess.py command that writes it."""
    return (f"expected {data}/{dataset}/{split}/index.csv (columns "
            f"{','.join(INDEX_FIELDS)}) and crops "
            f"{data}/{dataset}/{split}/<source>/<video_id>/<frame>.png; create them with: "
            f"{command_for(dataset, data)}")


def find_split(data: Path, dataset: str, split: str) -> Path | None:
    """The split folder when it has a non-empty index.csv, else None."""
    index = data / dataset / split / "index.csv"
    if not index.is_file() or index.stat().st_size == 0:
        return None
    return index.parent


def no_data_error(data: Path, names: list[str], split: str) -> str:
    """Nothing to evaluate: the layout evaluate.py expects and the command that writes it."""
    if not data.is_dir():
        return f"data directory {data}/ does not exist; " + layout_help(data, names[0], split)
    if len(names) == 1:
        return f"no {names[0]} preprocessed in {data}/; " + layout_help(data, names[0], split)
    example = command_for(names[0], data)
    return (f"none of {', '.join(names)} is preprocessed in {data}/; expected "
            f"{data}/<dataset>/{split}/index.csv and crops under it; create them with "
            f"`python preprocess.py --out {data}` (every dataset found under datasets/) or one "
            f"at a time, e.g. {example}")


def load_splits(data: Path, names: list[str], split: str
                ) -> tuple[dict[str, list[Video]], dict[str, Path | None], list[str], dict[str, str]]:
    """The split of each dataset in `names`, all of its crops: ({dataset: videos}, {dataset: split
    folder}, missing (not preprocessed), {dataset: why it cannot be used}). A broken dataset is
    listed, not allowed to stop the others; DataError when none can be used."""
    found = {d: find_split(data, d, split) for d in names}
    missing = [d for d in names if found[d] is None]
    if len(missing) == len(names):
        raise DataError(no_data_error(data, names, split))
    videos, failed = {}, {}
    for d in names:
        if found[d] is not None:
            try:
                videos[d] = load_videos(data, d, split, sources=None, max_frames=None)
            except DataError as e:
                failed[d] = str(e)
    if not videos:
        raise DataError("; ".join(failed.values()))
    return videos, found, missing, failed


def list_inputs(files: list[str], folder: str | None) -> list[tuple[Path, str]]:
    """The videos and images to score: `files` (--video/--image), then every one under `folder`
    (--input), each with the name of its --save-crops folder: the file's stem, or its path under
    `folder` without the extension; made unique (a~2), so two files never share a crops folder."""
    named = []
    for p in map(Path, files):
        if p.is_dir():
            raise IsADirectoryError(f"{p} is a folder, not a file: use --input {p} to score every file in it")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
        named.append((p, p.stem))
    if folder:
        root = Path(folder)
        if not root.is_dir():
            raise NotADirectoryError(f"--input {root}: not a folder")
        found = sorted(p for p in root.rglob("*") if p.is_file())
        exts = VIDEO_EXTS | IMAGE_EXTS
        media = [p for p in found if p.suffix.lower() in exts]
        if not media:
            raise FileNotFoundError(f"--input {root}: no video or image file ({' '.join(sorted(exts))}) found")
        if len(media) < len(found):
            print(f"--input {root}: {len(media)} video/image file(s), {len(found) - len(media)} "
                  f"other file(s) skipped")
        named += [(p, str(p.relative_to(root).with_suffix(""))) for p in media]
    out, used = [], set()
    for p, name in named:
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}~{k}"
        used.add(unique)
        out.append((p, unique))
    return out
