"""preprocess.py's runner: worker processes that end with the main one, each video's folder whole
or not at all, shards (--shard K/N, SLURM arrays), the failures ledger, index.csv from the disk.
The work: picklable `setup()` once per process and `process(video, out_dir, setup's result)`."""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import cv2
from tqdm import tqdm

from util.files import atomic_write, csv_text
from util.layouts import INDEX_FIELDS, Video
from util.signals import ignore_stop_signals

try:
    import fcntl  # file locks for shards ending at once (not on Windows)
except ImportError:
    fcntl = None

FAILURE_FIELDS = ["split", "source", "video_id", "file", "reason"]
Setup = Callable[[], Any]
Process = Callable[[Video, Path, Any], tuple[str, int]]


def _key(v: Video) -> tuple[str, str, str]:
    return v.split, v.source, v.video_id


def tmp_dir(out_dir: Path) -> Path:
    """The hidden folder a video is written into, renamed to `out_dir` when complete."""
    return out_dir.parent / f".tmp-{out_dir.name}"


def is_finished(out_dir: Path) -> bool:
    """meta.json, written last, marks a finished video folder."""
    return (out_dir / "meta.json").is_file()


def _save(path: Path, data: bytes) -> None:
    """A file's bytes, a failed write (full disk) naming the file."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_folder(out_dir: Path, files: Iterable[tuple[str, bytes]]) -> None:
    """A video's files (name, bytes), meta.json last, into tmp_dir, renamed to `out_dir` when
    complete; a failed write or an interruption removes it, leaving nothing a rerun takes as done."""
    tmp = tmp_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, data in files:
            _save(tmp / name, data)
        if out_dir.exists():  # a folder without meta.json: not finished, replaced
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cpu_count() -> int:
    """The cores this process may run on (a SLURM job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_STATE: Any = None  # what `setup` returned, in this process


def _init_worker(setup: Setup, parent: int | None = None) -> None:
    """`setup` here. A pool worker (of `parent`) also takes one OpenCV thread, ignores SIGTERM (the main
    process lets it finish its video), and exits within a second of its parent (a SIGKILL)."""
    global _STATE
    if parent is not None:
        cv2.setNumThreads(1)
        ignore_stop_signals(ctrl_c=False)

        def exit_with_parent() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=exit_with_parent, daemon=True).start()
    _STATE = setup()


def _run(process: Process, video: Video, out_dir: Path) -> tuple[Video, str, int]:
    try:
        return video, *process(video, out_dir, _STATE)
    except OSError:
        raise  # writing failed (full disk): stop; the video itself is fine
    except Exception as e:  # one bad video must not stop the run
        return video, f"error: {type(e).__name__}: {e}", 0


@contextlib.contextmanager
def _results(todo: list[tuple[Video, Path]], workers: int, process: Process, setup: Setup):
    """(video, why it failed, frames) as each finishes, here or in a pool with one video per worker
    in flight (an interruption waits for one each). An executor: a killed worker stops the run
    (BrokenProcessPool), not hangs it; spawned: a fork after threads (tqdm, cv2) can deadlock."""
    if workers == 1:
        _init_worker(setup)
        yield (_run(process, *job) for job in todo)
        return
    pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(setup, os.getpid()))

    def in_flight() -> Iterator[tuple[Video, str, int]]:
        jobs = iter(todo)
        pending = {pool.submit(_run, process, *job) for job in itertools.islice(jobs, workers)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            pending |= {pool.submit(_run, process, *job) for job in itertools.islice(jobs, len(finished))}
            yield from (f.result() for f in finished)
    try:
        yield in_flight()
    finally:  # also after Ctrl-C, SIGTERM, a full disk or a dead worker
        pool.shutdown(cancel_futures=True)  # the workers finish the videos in flight


@dataclass(frozen=True)
class Shard:
    """Part k (0..n-1) of n of a dataset's videos, by a hash of (split, source, video id) that is the
    same on every machine and Python (not hash()): n jobs anywhere cover each video once."""
    k: int = 0
    n: int = 1

    def owns(self, key: tuple[str, str, str]) -> bool:
        digest = hashlib.sha1("/".join(key).encode()).digest()
        return self.n == 1 or int.from_bytes(digest[:8], "big") % self.n == self.k


def shard_flag(text: str) -> Shard:
    """argparse type for --shard K/N."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with N >= 1 and K = 0..N-1, got {text}")
    return Shard(int(k), int(n))


def shard_for(flag: Shard | None, env: Mapping[str, str]) -> Shard:
    """--shard, else a SLURM array task's part (said, since it was not asked for): k = (task id -
    min) / step of the array's task count. ValueError where the ids are not min, min+step, ..."""
    if flag is not None or "SLURM_ARRAY_TASK_ID" not in env:
        return flag or Shard()
    said = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("SLURM_ARRAY_TASK_"))
    try:
        task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        n = int(env.get("SLURM_ARRAY_TASK_COUNT") or (int(env["SLURM_ARRAY_TASK_MAX"]) - low) // step + 1)
        k, rest = divmod(task - low, step)
    except (KeyError, ValueError, ZeroDivisionError):
        k, rest, n = -1, 0, 0
    if rest or not 0 <= k < n:
        raise ValueError(f"SLURM array variables {said}: no shard of the dataset; pass --shard K/N instead")
    print(f"shard {k}/{n} (from {said}; --shard 0/1 processes every video)")
    return Shard(k, n)


def _failures(ds_dir: Path) -> tuple[list[Path], dict[tuple[str, str, str], dict]]:
    """failures.csv and the shards' files, and every failed video in them (the newest file's row)."""
    read = []
    for path in [ds_dir / "failures.csv", *ds_dir.glob("failures.shard-*-of-*.csv")]:
        with contextlib.suppress(FileNotFoundError), open(path, newline="") as fh:  # merged away meanwhile
            read.append((os.fstat(fh.fileno()).st_mtime_ns, path, list(csv.DictReader(fh))))
    read.sort(key=lambda r: r[0])
    failures = {(r["split"], r["source"], r["video_id"]): r for _, _, rows in read for r in rows}
    return [path for _, path, _ in read], failures


def _write_failures(path: Path, failures: dict) -> None:
    atomic_write(path, csv_text(FAILURE_FIELDS, [failures[k] for k in sorted(failures)]))


def write_index(split_dir: Path) -> int:
    """<split>/index.csv from every finished video folder (meta.json, >= 1 crop)."""
    rows = []
    for meta_path in sorted(split_dir.glob("*/*/meta.json")):
        m = json.loads(meta_path.read_text())
        if not meta_path.parent.name.startswith(".") and m.get("n_frames", 0) >= 1:
            rows.append({**{k: m[k] for k in ("video_id", "source", "label", "n_frames", "file")},
                         "path": f"{m['source']}/{m['video_id']}"})
    atomic_write(split_dir / "index.csv", csv_text(INDEX_FIELDS, rows))
    return len(rows)


def _write_summary(ds_dir: Path, splits: list[str], merge_shards: bool) -> None:
    """failures.csv from every failure file less the videos finished since, and each split's index.csv
    from the disk: the last shard to end writes both for the whole dataset (shards ending at once
    take turns: a file lock); a run without --shard (merge_shards) folds the shards' files in."""
    with open(ds_dir / ".lock", "a") as lock:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_EX)  # released with the file
        files, failures = _failures(ds_dir)
        fail_path = ds_dir / "failures.csv"
        if failures or fail_path.exists():
            unfinished = {k: r for k, r in failures.items() if not is_finished(ds_dir.joinpath(*k))}
            _write_failures(fail_path, unfinished)
        for path in files if merge_shards else []:
            if path != fail_path:
                path.unlink(missing_ok=True)
        for s in splits:
            if (ds_dir / s).is_dir():
                print(f"{ds_dir.name}/{s}: {write_index(ds_dir / s)} videos in {ds_dir / s / 'index.csv'}")


def run_dataset(process: Process, setup: Setup, name: str, root: Path, videos: list[Video], *,
                out: str | Path = "data", workers: int = 1, shard: Shard = Shard(),
                retry_failed: bool = False) -> dict[str, int]:
    """The videos of one dataset into <out>/<name>, or its part `shard` (failures to its own file);
    finished ones skipped, and failed ones unless `retry_failed`. A failure is on disk at once (a
    killed run keeps it); index.csv and failures.csv for the whole dataset last. This part's counts."""
    mine = [v for v in videos if shard.owns(_key(v))]
    ds_dir = Path(out) / name
    ds_dir.mkdir(parents=True, exist_ok=True)
    failures = {k: r for k, r in _failures(ds_dir)[1].items() if shard.owns(k)}
    finished = [is_finished(ds_dir / v.split / v.path) for v in mine]
    todo = [(v, ds_dir / v.split / v.path) for v, done in zip(mine, finished)
            if not done and (retry_failed or _key(v) not in failures)]
    count = {"done": 0, "skipped": len(mine) - len(todo), "failed": 0, "total": len(mine)}
    before = count["skipped"] - sum(finished)
    part = f" (shard {shard.k}/{shard.n}: {len(mine)} of {len(videos)})" if shard.n > 1 else ""
    print(f"{name}: {len(mine)} videos in {root}{part}, {sum(finished)} already done, {before} failed before "
          f"(--retry-failed to redo), {len(todo)} to process")
    own = ds_dir / ("failures.csv" if shard.n == 1 else f"failures.shard-{shard.k}-of-{shard.n}.csv")
    frames, t0 = 0, time.time()
    with _results(todo, max(1, min(workers, len(todo))), process, setup) as results, \
            tqdm(total=len(todo), desc=name, unit="video", dynamic_ncols=True) as bar:
        for v, failed, n in results:
            frames += n
            count["failed" if failed else "done"] += 1
            failures.pop(_key(v), None)
            if failed:
                failures[_key(v)] = {"split": v.split, "source": v.source, "video_id": v.video_id,
                                     "file": str(v.file.relative_to(root)), "reason": failed}
                _write_failures(own, failures)
                tqdm.write(f"failed: {v.file}: {failed}")
            bar.update(1)
            bar.set_postfix(frames_s=f"{frames / max(time.time() - t0, 1e-9):.1f}", failed=count["failed"])
    _write_summary(ds_dir, sorted({v.split for v in videos}), merge_shards=shard.n == 1)
    print(f"{name}: done {count['done']}, skipped {count['skipped']} ({before} failed before), failed "
          f"{count['failed']}" + (f" -> {ds_dir / 'failures.csv'}" if failures else ""))
    return count
