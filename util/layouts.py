"""The datasets' official layouts read into videos (split, source, label), and the layout
preprocess.py writes for data.py, train.py and evaluate.py (no dlib, no torch here):

    <data>/<dataset>/<split>/index.csv                       video_id,source,label,n_frames,path,file
    <data>/<dataset>/<split>/<source>/<video_id>/<frame>.png  aligned 256x256 face crops (+ meta.json)
    <data>/<dataset>/failures.csv                            videos without a usable face
"""
from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATASETS = ("ff++", "dfd", "cdfv2", "dfdc", "dfdcp", "ffiw", "dsv1", "folder")
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# FF++ manipulation methods and the short names tables use; the paper trains on the first four
FFPP_METHODS = {"Deepfakes": "DF", "Face2Face": "F2F", "FaceSwap": "FS", "NeuralTextures": "NT",
                "FaceShifter": "FSh"}
# the paper's training set: the real videos (youtube) and the first four methods
FFPP_SOURCES = ("youtube", *list(FFPP_METHODS)[:4])

# where `python preprocess.py` (no arguments) looks for each, under --datasets-dir
DEFAULT_ROOTS = {"ff++": ["FaceForensics++"], "dfd": ["FaceForensics++", "DFD"], "cdfv2": ["Celeb-DF-v2"],
                 "dfdc": ["DFDC"], "dfdcp": ["DFDC-Preview"], "ffiw": ["FFIW10K"],
                 "dsv1": ["DeepSpeak-v1"], "folder": ["folder"]}


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
    """A dataset folder or listing file that is not the official layout: one line naming it."""


class DataError(ValueError):
    """Preprocessed data that cannot be used as it is: one line naming the file and what to run."""


def _not_a(dataset: str, root: Path, expected: str, probe: str = "") -> LayoutError:
    """--root is not the dataset: what was expected, and what is where the layout along `probe` stops."""
    path = root
    for part in Path(probe).parts:
        if not (path / part).is_dir():
            break
        path = path / part
    names = sorted(q.name + "/" * q.is_dir() for q in path.iterdir()) if path.is_dir() else ["(not a folder)"]
    found = ", ".join(names[:12]) + (f" ... ({len(names)} entries)" if len(names) > 12 else "") or "nothing"
    return LayoutError(f"--root {root} is not a {dataset} folder: expected {expected}; "
                       f"found in {path}: {found}")


@contextlib.contextmanager
def _reading(path: Path, expected: str, error: type[ValueError] = LayoutError):
    """A listing or index file that does not parse -> one error naming it and what it should hold."""
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, csv.Error) as e:
        raise error(f"{path} is not {expected} ({type(e).__name__}: {e})") from None


def _media(folder: Path, recursive: bool = True, images: bool = False) -> list[Path]:
    exts = VIDEO_EXTS | (IMAGE_EXTS if images else set())
    files = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in files if p.suffix.lower() in exts and p.is_file() and p.name[0] != ".")


def _uniquify(videos: list[Video], roots: dict[str, Path]) -> list[Video]:
    """Ids are file stems; where files of one source share one, their path below the source ('__'
    for '/'), with the extension where even that is shared (clip.mp4, clip.png)."""
    for keep_suffix in (False, True):
        count = Counter((v.split, v.source, v.video_id) for v in videos)
        for v in videos:
            if count[(v.split, v.source, v.video_id)] > 1:
                rel = v.file.relative_to(roots[v.source])
                v.video_id = "__".join((rel if keep_suffix else rel.with_suffix("")).parts)
    return videos


def _warn_missing(dataset: str, missing: list, where) -> None:
    if missing:
        print(f"warning: {dataset}: {len(missing)} videos listed in {where} not found, left out "
              f"(e.g. {missing[0]})", file=sys.stderr)


def _ffpp_splits(root: Path, splits_dir: str | None) -> dict[str, str]:
    """The official FF++ split files (JSON lists of [target, source] pairs of 3-digit ids) -> {video
    id (real 'NNN', fake 'NNN_MMM'): split}. An id in two files stops: a test video in train."""
    dirs = [Path(splits_dir)] if splits_dir else [root, root / "splits", root / "dataset" / "splits"] + \
        [Path(p).parent for p in sorted(glob.glob(str(root / "*" / "*" / "train.json")))]
    found = [d for d in dirs if all((d / f"{s}.json").is_file() for s in ("train", "val", "test"))]
    if not found:
        raise LayoutError(f"FF++ split files train/val/test.json not found in {splits_dir or root}; get them "
                          "from github.com/ondyari/FaceForensics (dataset/splits) and pass --splits DIR")
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = found[0] / f"{split}.json"
        with _reading(path, 'a JSON list of ["target", "source"] id pairs'):
            entries = json.loads(path.read_text(encoding="utf-8-sig"))
        for i, pair in enumerate(entries if isinstance(entries, list) and entries else [entries], 1):
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, str) and re.fullmatch(r"\d{3}", x) for x in pair)):
                raise LayoutError(f'{path} entry {i}: expected a pair of 3-digit ids such as ["953", "974"] '
                                  f"(the official split file), got {json.dumps(pair):.80}")
            for vid in pair:
                if split_of.setdefault(vid, split) != split:
                    raise LayoutError(f"{path} entry {i}: id {vid} is in {split_of[vid]}.json too")
            split_of.update({f"{pair[0]}_{pair[1]}": split, f"{pair[1]}_{pair[0]}": split})
    return split_of


def _list_ffpp(root: Path, c: str, splits_dir: str | None, dfd: bool = False) -> list[Video]:
    """<original|manipulated>_sequences/<source>/<c>/videos/*.mp4 (+ masks/videos): FF++ (youtube and
    the methods, split by the split files) or DFD (actors and DeepFakeDetection, all test)."""
    real, fakes = ("actors", ["DeepFakeDetection"]) if dfd else ("youtube", list(FFPP_METHODS))
    name = "DFD" if dfd else "FaceForensics++"
    expected = (f"original_sequences/{real}/{c}/videos/*.mp4 and "
                f"manipulated_sequences/{{{','.join(fakes[:4])}}}/{c}/videos/*.mp4")
    if not (root / "original_sequences" / real / c / "videos").is_dir():
        raise _not_a(name, root, expected, f"original_sequences/{real}/{c}/videos")
    split_of = {} if dfd else _ffpp_splits(root, splits_dir)
    videos, missing = [], []
    for source in (real, *fakes):
        base = root / ("original_sequences" if source == real else "manipulated_sequences") / source
        found = {f.stem: f for f in _media(base / c / "videos", recursive=False)}
        for f in found.values():
            mask = base / "masks" / "videos" / f.name
            if split := "test" if dfd else split_of.get(f.stem):
                mask = mask if mask.is_file() else None
                videos.append(Video(split, source, f.stem, int(source != real), f, mask))
        if (base / c / "videos").is_dir():  # a method not downloaded is no gap; its missing files are
            missing += [base / c / "videos" / f"{i}.mp4" for i in split_of
                        if ("_" in i) == (source != real) and i not in found]
    if not any(v.label for v in videos):
        raise _not_a(name, root, expected, "manipulated_sequences")
    _warn_missing("ff++", missing, "the split files")
    return videos


CDFV2_SOURCES = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}


def _list_cdfv2(root: Path) -> list[Video]:
    """List_of_testing_videos.txt (`<label> <folder>/<file>.mp4`, label 1 = real) is checked line by
    line: a file with swapped columns would match no video and put every video in train."""
    listing = root / "List_of_testing_videos.txt"
    if not listing.is_file() or not all((root / s).is_dir() for s in CDFV2_SOURCES):
        raise _not_a("Celeb-DF-v2", root, "Celeb-real/, Celeb-synthesis/, YouTube-real/ and "
                     "List_of_testing_videos.txt")
    with _reading(listing, "lines '<1|0> <folder>/<file>.mp4'"):
        lines = listing.read_text(encoding="utf-8-sig").splitlines()
    test = set()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        folder = Path(parts[-1]).parts[0] if parts and len(Path(parts[-1]).parts) == 2 else None
        if parts and (len(parts) != 2 or parts[0] != str(1 - CDFV2_SOURCES.get(folder, -1))):
            raise LayoutError(f"{listing} line {n}: expected `<label> <folder>/<file>.mp4`, label 1 for "
                              f"Celeb-real and YouTube-real, 0 for Celeb-synthesis; got {line.strip()!r:.80}")
        if parts and not (root / parts[1]).is_file():
            raise LayoutError(f"{listing} line {n}: {root / parts[1]} does not exist; complete the "
                              "Celeb-DF-v2 download (or point --root at its folder)")
        test |= {parts[1]} if parts else set()
    if not test:
        raise LayoutError(f"{listing} lists no video; expected `<label> <folder>/<file>.mp4` lines")
    return [Video("test" if f"{source}/{f.name}" in test else "train", source, f.stem, label, f)
            for source, label in CDFV2_SOURCES.items() for f in _media(root / source, recursive=False)]


def _list_dfdc(root: Path) -> list[Video]:
    """DFDC's test/labels.csv (filename,label; 1 = fake) row by row; it comes in parts: gaps warned of."""
    test = root / "test"
    if (root / "labels.csv").is_file() and not (test / "labels.csv").is_file():
        test = root  # --root is the test folder itself
    labels = test / "labels.csv"
    if not labels.is_file():
        raise _not_a("DFDC", root, "test/labels.csv (filename,label) and the test videos under test/", "test")
    with _reading(labels, "a CSV with columns filename,label (label 1 = fake, 0 = real)"), \
            open(labels, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        rows = [(reader.line_num, row) for row in reader]
    if not {"filename", "label"} <= set(reader.fieldnames):
        raise LayoutError(f"{labels} line 1: expected the columns filename,label; got {reader.fieldnames}")
    files, videos, missing = {f.name: f for f in _media(test)}, [], []
    for line, row in rows:
        name, label = (str(row.get(k) or "").strip() for k in ("filename", "label"))
        if not name or label not in ("0", "1", "0.0", "1.0"):
            raise LayoutError(f"{labels} line {line}: expected `<file>.mp4,<label>` with label 0 (real) or "
                              f"1 (fake), got {json.dumps(row):.80}")
        if (f := files.get(Path(name).name)) is None:
            missing.append(name)
        else:
            videos.append(Video("test", "fake" if float(label) else "real", f.stem, int(float(label)), f))
    _warn_missing("dfdc", missing, labels)
    if not videos:
        raise _not_a("DFDC", root, "the videos listed in test/labels.csv under test/", "test")
    return videos


def _list_dfdcp(root: Path) -> list[Video]:
    index = root / "dataset.json"
    if not index.is_file():
        raise _not_a("DFDC-Preview", root, "dataset.json and the video folders it lists")
    expected = '{"label": "real"|"fake", "set": "train"|"test", ...}'
    with _reading(index, f'a JSON object {{"<video path>": {expected}}}'):
        entries = dict(json.loads(index.read_text(encoding="utf-8-sig")).items())
    videos, roots = [], {}
    for rel, info in entries.items():
        if not (isinstance(info, dict) and info.get("label") in ("real", "fake")
                and info.get("set") in ("train", "test")):
            raise LayoutError(f'{index} entry "{rel}": expected {expected}, got {json.dumps(info):.80}')
        if not (root / rel).is_file():  # one archive holds them all: a gap is an incomplete download
            raise LayoutError(f'{index} entry "{rel}": {root / rel} does not exist; complete the '
                              "DFDC-Preview download (or point --root at its folder)")
        source = Path(rel).parts[0]
        roots[source] = root / source
        videos.append(Video(info["set"], source, Path(rel).stem, int(info["label"] == "fake"), root / rel))
    if not videos:
        raise _not_a("DFDC-Preview", root, "the videos listed in dataset.json")
    return _uniquify(videos, roots)


def _list_ffiw(root: Path) -> list[Video]:
    """FFIW10K: {source (real), target (fake)}/<split>/*.mp4, perhaps in release folders below."""
    videos = [Video(split, source, f.stem, label, f)
              for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]
              for source, label in (("source", 0), ("target", 1))
              for split in ("train", "val", "test") for f in _media(base / source / split)]
    if not videos:
        raise _not_a("FFIW10K", root, "source/{train,val,test}/*.mp4 and target/{train,val,test}/*.mp4 "
                     "(or release folders holding them)")
    return videos


def _list_sources(root: Path, name: str, splits: bool, images: bool) -> list[Video]:
    """dsv1: root[/<split>]/<source>/**/<video>; folder: root/<source>/**/<video or image>, all test
    (a folder named test is a source there). 'real' in the source name = real."""
    bases = [(s, root / s) for s in ("train", "val", "test") if splits and (root / s).is_dir()]
    bases = bases or [("test", root)]
    videos, roots = [], {}
    for split, base in bases:
        for src in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            roots[src.name] = src
            videos += [Video(split, src.name, f.stem, int("real" not in src.name.lower()), f)
                       for f in _media(src, images=images)]
    if not videos:
        raise _not_a(name, root, "<source>/<videos> folders ('real' in a source name = real)"
                     + (", optionally under train/ and test/" if splits else ""))
    return _uniquify(videos, roots)


def list_videos(dataset: str, root, compression: str = "c23", splits_dir: str | None = None) -> list[Video]:
    """Every video of a dataset in its official layout. LayoutError for a wrong root (what was
    expected, what was found) or two files with one output folder."""
    root = Path(root)
    if not root.is_dir():
        raise _not_a(dataset, root, "a folder")
    if dataset in ("ff++", "dfd"):
        videos = _list_ffpp(root, compression, splits_dir, dfd=dataset == "dfd")
    elif dataset == "cdfv2":
        videos = _list_cdfv2(root)
    elif dataset == "dfdc":
        videos = _list_dfdc(root)
    elif dataset == "dfdcp":
        videos = _list_dfdcp(root)
    elif dataset == "ffiw":
        videos = _list_ffiw(root)
    else:  # dsv1 may have train/ and test/ folders; folder is all test and holds images too
        videos = _list_sources(root, dataset, splits=dataset == "dsv1", images=dataset == "folder")
    first: dict[tuple[str, str, str], Path] = {}
    for v in videos:
        if (other := first.setdefault((v.split, v.source, v.video_id), v.file)) != v.file:
            raise LayoutError(f"{other} and {v.file} would both be written to {v.split}/{v.path}")
    return videos


def find_dataset(name: str, base="datasets", compression: str = "c23",
                 splits_dir: str | None = None) -> tuple[Path, list[Video]]:
    """The dataset in its usual folder under `base`, and its videos; LayoutError: where, and why not."""
    roots = [Path(base) / rel for rel in DEFAULT_ROOTS[name]]
    why = ""
    for root in filter(Path.is_dir, roots):
        try:
            return root, list_videos(name, root, compression, splits_dir)
        except LayoutError as e:
            why = f": {e}"
    raise LayoutError(f"{name} not found in {' or '.join(map(str, roots))}{why}; pass --root PATH "
                      "(README.md: where to get it)")


def output_name(dataset: str, compression: str = "c23") -> str:
    """Folder name under --out: ff++ / dfd at another compression go to ff++-c40 etc."""
    return f"{dataset}-{compression}" if dataset in ("ff++", "dfd") and compression != "c23" else dataset


# ----------------------------------------------------------------------------- the crops' layout

INDEX_FIELDS = ["video_id", "source", "label", "n_frames", "path", "file"]


def command_for(name: str, out: str | Path = "data") -> str:
    """The command that writes <out>/<name>, for a folder name as output_name gives it (ff++-c40)."""
    dataset, _, compression = name.partition("-")
    flag = f" --compression {compression}" if compression else ""
    root = f"datasets/{DEFAULT_ROOTS.get(dataset, [dataset])[0]}"
    return f"python preprocess.py --dataset {dataset}{flag} --root {root} --out {out}"


def load_videos(data: str | Path = "data", dataset: str = "ff++", split: str = "train",
                sources: tuple[str, ...] | list[str] | None = FFPP_SOURCES,
                max_frames: int | None = 32) -> list[Video]:
    """The videos of a preprocessed split in index.csv, of `sources` (None = all), each with up to
    `max_frames` crops (evenly spaced; None = all). DataError naming the file and the command
    that writes it when the split is missing or index.csv and the crops disagree."""
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
    if sources is not None and not set(sources) <= set(found):
        raise DataError(f"{index}: no videos of source(s) {sorted(set(sources) - set(found))}; found {found}")
    videos = []
    for r in rows:
        if sources is not None and r["source"] not in sources:
            continue
        v = Video(split, r["source"], r["video_id"], int(r["label"]), r.get("file") or "")
        folder = (split_dir / v.path).resolve()
        frames = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not frames:
            raise DataError(f"{index} lists {v.path} but {folder} holds no <frame>.png crops; re-run "
                            f"`{command}`")
        keep = range(len(frames)) if max_frames is None or len(frames) <= max_frames else \
            np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
        v.frames = [frames[k] for k in keep]
        videos.append(v)
    return videos


def load_splits(data: Path, names: list[str], split: str
                ) -> tuple[dict[str, list[Video]], dict[str, Path | None], list[str], dict[str, str]]:
    """Each dataset's split, all of its crops: ({dataset: videos}, {dataset: split folder}, the ones
    not preprocessed, {dataset: why it cannot be used}); DataError when none can be used."""
    indexes = {d: data / d / split / "index.csv" for d in names}
    found = {d: i.parent if i.is_file() and i.stat().st_size else None for d, i in indexes.items()}
    missing = [d for d in names if found[d] is None]
    if len(missing) == len(names):
        one = names[0] if len(names) == 1 else "<dataset>"
        raise DataError(f"no {' or '.join(names)} preprocessed in {data}/: expected {data}/{one}/{split}/"
                        f"index.csv and the crops under it; create them with `{command_for(names[0], data)}`"
                        + ("" if len(names) == 1 else f" (or `python preprocess.py --out {data}`: all)"))
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
    """The files to score: `files` (--video/--image), then every video or image under `folder`
    (--input), each with a unique name for its --save-crops folder (its stem, or its path under
    `folder`; a~2 for the second a). FileNotFoundError naming the flag or file."""
    named = []
    for p in map(Path, files):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is a folder, not a file: use --input {p}" if p.is_dir() else
                                    f"{p}: file not found")
        named.append((p, p.stem))
    if folder:
        root = Path(folder)
        found = sorted(p for p in root.rglob("*") if p.is_file())
        media = [p for p in found if p.suffix.lower() in VIDEO_EXTS | IMAGE_EXTS]
        if not media:
            raise FileNotFoundError(f"--input {root}: " + ("no video or image file in it" if root.is_dir()
                                                           else "not a folder"))
        if len(media) < len(found):
            print(f"--input {root}: {len(media)} video/image file(s), {len(found) - len(media)} skipped")
        named += [(p, str(p.relative_to(root).with_suffix(""))) for p in media]
    used: set[str] = set()
    for i, (p, name) in enumerate(named):
        unique = next(u for k in itertools.count(1) if (u := name if k == 1 else f"{name}~{k}") not in used)
        used.add(unique)
        named[i] = (p, unique)
    return named
