"""Writing outputs: every file whole or not at all, and a failed write as one line naming the file."""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


def atomic_write(path: str | os.PathLike, data: str | bytes | memoryview) -> None:
    """A file whole or not at all: a temporary file beside it (a unique name, so that processes
    writing one file at once never mix their bytes), renamed over it. A full disk or a kill
    midway leaves the old file, never a truncated one that a rerun would take as finished."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:  # name the file meant, not tmp
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def csv_text(fields: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@contextlib.contextmanager
def writing(path: str | os.PathLike, advice: str | None = None) -> Iterator[None]:
    """A failed write inside as one OSError `cannot write FILE: why; advice` (FILE: the one the
    error names, else `path`; on a full disk the advice is to free space and re-run)."""
    try:
        yield
    except OSError as e:
        if advice is None:
            advice = "free some disk space and re-run" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        why = f"cannot write {e.filename or path}: {e.strerror or e}" + (f"; {advice}" if advice else "")
        error = OSError(why)
        error.errno = e.errno  # for callers that tell a full disk apart; the message stays one line
        raise error from None


def write_output(path: Path, content: str | bytes) -> None:
    """atomic_write, its folder made first."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, content)


def write_json(path: Path, obj) -> None:
    write_output(path, json.dumps(obj, indent=2) + "\n")


def png_bytes(bgr: np.ndarray) -> bytes:
    """A BGR (or grey) uint8 image as PNG bytes."""
    return cv2.imencode(".png", bgr)[1].tobytes()


class CSVRows:
    """A CSV file written row by row, each row flushed, so that a long run that stops keeps what it
    wrote; a failed write is one OSError naming the file."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.rows = path, 0
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=fields)
            self.writer.writeheader()
            self.file.flush()

    def write_rows(self, rows: list[dict]) -> None:
        with writing(self.path):
            self.writer.writerows(rows)
            self.file.flush()
        self.rows += len(rows)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # every row was flushed (or its error raised) already
            self.file.close()


def write_person_crops(folder: Path, persons: list[dict[int, bytes]]) -> None:
    """<folder>/person<k>/<frame>.png from each person's {frame: PNG bytes}, replacing the crops a
    past run left there; nothing else in the folder (the user's) is touched."""
    for old in folder.glob("person*/*.png"):
        if old.stem.isdigit():
            old.unlink()
    for k, crops in enumerate(persons, 1):
        for frame, png in crops.items():
            write_output(folder / f"person{k}" / f"{frame}.png", png)
