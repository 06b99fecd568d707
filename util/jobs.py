"""Running the work on each video of a dataset, or of every dataset found: a pool of worker
processes (one video each, ended with the main process), each video's folder written whole or not
at all, shards of a dataset (--shard K/N, SLURM arrays), the ledger of failed videos, and the
summary every run ends with (each split's index.csv and the dataset's failures.csv).

What processing one video means is passed in as two picklable top-level functions: `setup()`, run
once per process (preprocess.py: its face models), and `process(job, what setup returned)`.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import itertools
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
from tqdm import tqdm

try:
    import fcntl  # file locks for shards ending at once (not on Windows)
except ImportError:
    fcntl = None

from util.files import atomic_write, csv_text
from util.layouts import (DATASETS, FAILURE_FIELDS, WHERE_TO_GET, LayoutError, Video, default_roots,
                          find_dataset, list_videos, output_name, read_failures, rel_path,
                          write_index)
from util.signals import ignore_stop_signals


@dataclass
class Job:
    video: Video
    out_dir: Path          # <out>/<dataset>/<split>/<source>/<video_id>
    root: Path             # dataset root, for relative paths in meta.json
    dataset: str
    n_frames: int
    size: int
    scale: float
    detect_side: int
    reference: bool


@dataclass
class Result:
    job: Job
    status: str            # "done" | "failed"
    reason: str = ""
    n_sampled: int = 0     # frames decoded and searched (for frames/s)


Setup = Callable[[], Any]              # once per process: what every job needs (face models)
Process = Callable[[Job, Any], Result]  # one video, given what setup returned


# ----------------------------------------------------------------------------- a video's folder

def tmp_dir(out_dir: Path) -> Path:
    """Hidden temporary folder next to the final one; renamed when the video is complete."""
    return out_dir.parent / f".tmp-{out_dir.name}"


def is_finished(out_dir: Path) -> bool:
    """meta.json, written last, marks a finished video folder."""
    return (out_dir / "meta.json").is_file()


def _save(path: Path, data: bytes) -> None:
    """Write a file in Python (not cv2.imwrite, which reports a full disk only by returning False): a
    failure is an OSError that names the file."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_folder(out_dir: Path, files: Iterable[tuple[str, bytes]]) -> None:
    """A video's files (name, bytes), meta.json last, into a temporary folder, renamed to `out_dir`
    only when complete. A failed write (full disk) or an interruption removes the temporary folder:
    nothing is left that a rerun would take as finished."""
    tmp = tmp_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, data in files:
            _save(tmp / name, data)
        if out_dir.exists():  # a folder without meta.json: not finished, replace it
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- workers

def cpu_count() -> int:
    """The cores this process may run on (a SLURM job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_STATE: Any = None  # what `setup` returned, per process
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent: int) -> None:
    """End this worker when the main process is gone (SIGKILL, the out-of-memory killer, a
    closed SSH session) instead of processing on as an orphan: on Linux the kernel kills it
    (PR_SET_PDEATHSIG); everywhere, a daemon thread also looks for its parent every second
    (it also catches a parent that died before the prctl call)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(setup: Setup, parent: int | None = None) -> None:
    """`setup` for this process. A pool worker (`parent` = the main process id) also gets one
    OpenCV thread (one process per core already), ends with its parent, and ignores SIGTERM: the
    main process decides (it lets the worker finish its video, then stops it). Ctrl-C (SIGINT)
    still reaches the workers, which drop the videos in flight."""
    global _STATE
    if parent is not None:
        cv2.setNumThreads(1)
        ignore_stop_signals(ctrl_c=False)
        _exit_with_parent(parent)
    _STATE = setup()


def _run_job(process: Process, job: Job) -> Result:
    try:
        return process(job, _STATE)
    except OSError:
        raise  # writing failed (full disk): stop, the video itself is fine
    except Exception as e:
        return Result(job, "failed", f"error: {type(e).__name__}: {e}")


@contextlib.contextmanager
def _results(jobs: list[Job], workers: int, process: Process, setup: Setup):
    """Each job's Result as it finishes, in this process (workers=1) or in a process pool."""
    if workers == 1:
        _init_worker(setup)
        yield (_run_job(process, j) for j in jobs)
        return
    # an executor (not multiprocessing.Pool) so that a worker killed by the system (out of
    # memory) stops the run with BrokenProcessPool instead of hanging it; spawn, because a
    # fork after threads were started (tqdm, cv2) can deadlock
    pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(setup, os.getpid()))
    try:
        yield _in_flight(pool, jobs, workers, process)
    finally:  # also after Ctrl-C, SIGTERM, a full disk or a dead worker
        pool.shutdown(cancel_futures=True)  # the workers finish the videos in flight


def _in_flight(pool: ProcessPoolExecutor, jobs: list[Job], n: int,
               process: Process) -> Iterator[Result]:
    """Results as they finish, with only `n` jobs (one per worker) submitted at a time: the
    pool runs whatever reached its queue, so an interruption then waits for one video per
    worker, not for every queued one."""
    todo = iter(jobs)
    pending = {pool.submit(_run_job, process, j) for j in itertools.islice(todo, n)}
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        pending |= {pool.submit(_run_job, process, j)
                    for j in itertools.islice(todo, len(finished))}
        for f in finished:
            yield f.result()


# ----------------------------------------------------------------------------- shards

@dataclass(frozen=True)
class Shard:
    """Part k (0..n-1) of n of a dataset's videos. A video's part depends only on its (split,
    source, video id), through a hash that is the same on every machine and Python (not
    hash()), so n jobs anywhere cover each video once and a rerun gets the same videos."""
    k: int = 0
    n: int = 1

    def __post_init__(self):
        if not (self.n >= 1 and 0 <= self.k < self.n):
            raise ValueError(f"shard {self.k}/{self.n}: expected K/N with N >= 1 and K = 0..N-1")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, key: tuple[str, str, str]) -> bool:
        """Whether the video (split, source, video_id) is in this part."""
        if self.n == 1:
            return True
        digest = hashlib.sha1("/".join(key).encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.n == self.k

    @property
    def failures_name(self) -> str:
        """The file this part writes its failed videos to (merged into failures.csv)."""
        return "failures.csv" if self.n == 1 else f"failures.shard-{self.k}-of-{self.n}.csv"


SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
               "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT")


def shard_from_env(env: Mapping[str, str]) -> tuple[Shard, str] | None:
    """The shard of a SLURM array task, or None outside one: k = (task id - min) / step
    (ids may start anywhere, e.g. --array=1-16, or step, --array=0-30:2) of the array's task
    count. ValueError for ids that are not min, min+step, ... (an --array list like 1,4,9)."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    said = " ".join(f"{name}={env[name]}" for name in SLURM_ARRAY if name in env)
    fix = "; pass --shard K/N (K = 0..N-1) to each task instead"
    try:
        task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        count = int(env["SLURM_ARRAY_TASK_COUNT"]) if "SLURM_ARRAY_TASK_COUNT" in env \
            else (int(env["SLURM_ARRAY_TASK_MAX"]) - low) // step + 1
        k, rest = divmod(task - low, step)
        if rest:
            raise ValueError("task id not min + a multiple of the step")
        return Shard(k, count), said
    except (KeyError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"SLURM array variables {said}: no shard of the dataset ({e}){fix}") \
            from None


def shard_flag(text: str) -> Shard:
    """argparse type for --shard K/N."""
    k, _, n = text.partition("/")
    try:
        return Shard(int(k), int(n))  # no "/": int("") fails too
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected K/N with N >= 1 and K = 0..N-1 (the parts of --shard 0/4 ... 3/4 cover "
            f"a dataset once), got {text}") from None


def shard_for(flag: Shard | None, env: Mapping[str, str]) -> Shard:
    """--shard, else the SLURM array task's part (said, since it was not asked for)."""
    if flag is not None:
        return flag
    found = shard_from_env(env)
    if found is None:
        return Shard()
    shard, said = found
    print(f"shard {shard} (from {said}; --shard 0/1 processes every video)")
    return shard


# ----------------------------------------------------------------------------- bookkeeping

def _select(videos: list[Video], split: str | None, limit: int | None,
            where: str) -> list[Video]:
    """Only `split` (when given); at most `limit` videos per split and source (a quick subset
    for smoke runs)."""
    if split:
        splits = sorted({v.split for v in videos})
        if split not in splits:
            raise LayoutError(f"{where} has no split {split!r}; found: {', '.join(splits)}")
        videos = [v for v in videos if v.split == split]
    if limit:
        count: Counter = Counter()
        kept = []
        for v in videos:
            count[(v.split, v.source)] += 1
            if count[(v.split, v.source)] <= limit:
                kept.append(v)
        videos = kept
    return videos


def _failure_files(ds_dir: Path) -> list[Path]:
    """failures.csv and the shards' failures.shard-K-of-N.csv, oldest first."""
    def mtime(p: Path) -> int:
        with contextlib.suppress(OSError):
            return p.stat().st_mtime_ns
        return -1
    files = [ds_dir / "failures.csv", *ds_dir.glob("failures.shard-*-of-*.csv")]
    return sorted((p for p in files if p.is_file()), key=mtime)


def _known_failures(files: list[Path]) -> dict[tuple[str, str, str], dict]:
    """Every failed video of these files; where one is in several, the newest file's row."""
    failures: dict[tuple[str, str, str], dict] = {}
    for path in files:
        with contextlib.suppress(FileNotFoundError):  # a shard file merged away meanwhile
            failures.update(read_failures(path))
    return failures


def _failures_text(failures: dict) -> str:
    return csv_text(FAILURE_FIELDS, [failures[k] for k in sorted(failures)])


@contextlib.contextmanager
def _dataset_lock(ds_dir: Path):
    """Shards that end at once take turns writing index.csv and failures.csv, so the last one
    writes them whole. Best effort: without file locks (Windows, Lustre without -o flock) the
    files are still written whole, and a run without --shard after the array rewrites them."""
    with open(ds_dir / ".lock", "a") as fh:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # the lock ends with the file


def _write_summary(ds_dir: Path, splits: list[str], merge_shards: bool) -> None:
    """failures.csv from every failure file (the shards' too) less the videos finished since,
    and each split's index.csv from the finished folders on disk. Every shard does this when
    it ends, so the last one writes both for the whole dataset; a run without --shard
    (merge_shards) also folds the shards' files into failures.csv and removes them."""
    with _dataset_lock(ds_dir):
        files = _failure_files(ds_dir)
        failures = {k: r for k, r in _known_failures(files).items()
                    if not is_finished(ds_dir.joinpath(*k))}
        fail_path = ds_dir / "failures.csv"
        if failures or fail_path.exists():
            atomic_write(fail_path, _failures_text(failures))
        if merge_shards:
            for path in files:
                if path != fail_path:
                    path.unlink(missing_ok=True)
        for s in splits:
            if (ds_dir / s).is_dir():
                n = write_index(ds_dir / s)
                print(f"{ds_dir.name}/{s}: {n} videos in {ds_dir / s / 'index.csv'}")


def _process(jobs: list[Job], workers: int, process: Process, setup: Setup, desc: str,
             failures: dict, fail_path: Path) -> tuple[int, int]:
    """Run the jobs under a progress bar (videos, frames/s); a failure is written to
    `fail_path` at once, so that a killed run keeps it. Returns (done, failed)."""
    done = failed = frames = 0
    t0 = time.time()
    with _results(jobs, workers, process, setup) as results, \
            tqdm(total=len(jobs), desc=desc, unit="video", dynamic_ncols=True) as bar:
        for r in results:
            v = r.job.video
            key = (v.split, v.source, v.video_id)
            frames += r.n_sampled
            if r.status == "done":
                done += 1
                failures.pop(key, None)
            else:
                failed += 1
                failures[key] = {"split": v.split, "source": v.source, "video_id": v.video_id,
                                 "file": rel_path(v.file, r.job.root), "reason": r.reason}
                atomic_write(fail_path, _failures_text(failures))
                tqdm.write(f"failed: {v.file}: {r.reason}")
            bar.update(1)
            bar.set_postfix(frames_s=f"{frames / max(time.time() - t0, 1e-9):.1f}",
                            failed=failed)
    return done, failed


def _plan(videos: list[Video], ds_dir: Path, failures: dict,
          retry_failed: bool) -> tuple[list[Video], int, int]:
    """(videos to process, videos finished before, videos that failed before and are not
    retried)."""
    todo, skipped, skipped_failed = [], 0, 0
    for v in videos:
        if is_finished(ds_dir / v.split / v.path):
            skipped += 1
        elif (v.split, v.source, v.video_id) in failures and not retry_failed:
            skipped_failed += 1
        else:
            todo.append(v)
    return todo, skipped, skipped_failed


def run_dataset(process: Process, setup: Setup, dataset: str, root, *, n_frames: int,
                size: int, scale: float, detect_side: int, reference: bool, out="data",
                split: str | None = None, workers: int | None = None,
                compression: str = "c23", splits_dir: str | None = None,
                retry_failed: bool = False, limit: int | None = None,
                shard: Shard = Shard(), videos: list[Video] | None = None) -> dict[str, int]:
    """Process one dataset, or only its part `shard` (see Shard; failures then go to the
    shard's own file); returns counts {"done", "skipped", "failed", "total"} of the videos
    processed here. Ends with index.csv and failures.csv for the whole dataset (_write_summary).
    `limit`: at most that many videos per split and source (a quick subset for smoke runs).
    `videos`: the dataset's list_videos when the caller has it already (find_dataset)."""
    root = Path(root)
    if videos is None:
        videos = list_videos(dataset, root, compression, splits_dir)
    listed = _select(videos, split, limit, f"{dataset} at {root}")
    videos = [v for v in listed if shard.owns((v.split, v.source, v.video_id))]
    name = output_name(dataset, compression)
    ds_dir = Path(out) / name
    ds_dir.mkdir(parents=True, exist_ok=True)
    failures = {k: r for k, r in _known_failures(_failure_files(ds_dir)).items()
                if shard.owns(k)}
    todo, skipped, skipped_failed = _plan(videos, ds_dir, failures, retry_failed)
    jobs = [Job(v, ds_dir / v.split / v.path, root, name, n_frames, size, scale, detect_side,
                reference) for v in todo]
    part = f" (shard {shard}: {len(videos)} of {len(listed)})" if shard.n > 1 else ""
    print(f"{name}: {len(videos)} videos in {root}{part}, {skipped} already done, "
          f"{skipped_failed} failed before (--retry-failed to redo), {len(jobs)} to process")

    if jobs:  # a bad --landmarks file: one clear error here, not a broken pool of workers
        setup()
    workers = max(1, min(workers or cpu_count(), len(jobs) or 1))
    own = ds_dir / shard.failures_name
    done, failed = _process(jobs, workers, process, setup, name, failures, own)
    if shard.n > 1 and (failures or own.exists()):  # retried videos that succeeded leave it
        atomic_write(own, _failures_text(failures))
    _write_summary(ds_dir, sorted({v.split for v in listed}), merge_shards=shard.n == 1)
    fail_path = ds_dir / "failures.csv"
    print(f"{name}: done {done}, skipped {skipped + skipped_failed} "
          f"({skipped_failed} failed before), failed {failed}"
          + (f" -> {fail_path}" if failed or skipped_failed else ""))
    return {"done": done, "skipped": skipped + skipped_failed, "failed": failed,
            "total": len(videos)}


# ----------------------------------------------------------------------------- datasets

def find_root(dataset: str, base, compression: str = "c23",
              splits_dir: str | None = None) -> tuple[Path, list[Video]]:
    """--dataset without --root: its usual folder under `base`, and its videos."""
    root, videos, why = find_dataset(dataset, base, compression, splits_dir)
    if root is None:
        tried = ", ".join(str(r) for r in default_roots(dataset, base))
        raise LayoutError(f"{dataset} not found (looked in {tried}" + (f"; {why}" if why else "")
                          + f"); pass --root PATH. Get it: {WHERE_TO_GET[dataset]}")
    return root, videos


def run_found(run: Callable[[str, Path, list[Video]], Any], base, compression: str = "c23",
              splits_dir: str | None = None) -> None:
    """No --dataset: `run(name, root, videos)` for every dataset found under `base`, after a list of
    those found and, for the others, where to get them. A dataset that lacks the split asked for is
    skipped, not the run."""
    found = {name: find_dataset(name, base, compression, splits_dir) for name in DATASETS}
    for name, (root, _, why) in found.items():
        if root is not None:
            print(f"found   {name:7s} {root}")
        else:
            tried = ", ".join(str(r) for r in default_roots(name, base))
            print(f"missing {name:7s} (looked in {tried}) -> {WHERE_TO_GET[name]}"
                  + (f"\n        not usable: {why}" if why else ""))
    if not any(root for root, _, _ in found.values()):
        raise LayoutError(f"no dataset found under {base}/; put them in the folders above or "
                          "pass --dataset NAME --root PATH")
    for name, (root, videos, _) in found.items():
        if root is not None:
            try:
                run(name, root, videos)
            except LayoutError as e:  # --split val where this dataset has none: the others go on
                print(f"skipped {name}: {e}")
