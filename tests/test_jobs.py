"""Tests for util/jobs.py: shards (--shard K/N, SLURM array tasks) give the files of one run, the
job pool (any process function, workers ending with the main process, SIGTERM finishing the videos
in flight), the failure ledger, and folders written whole or not at all on a full disk. Most go
through preprocess.py's command line, as a user runs it."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _video_utils as U
import preprocess as P
from util import files, jobs, layouts


def tree(folder: Path) -> dict[str, bytes]:
    """Every output file below `folder` by relative path (not the lock, not the shards'
    failure files, which are bookkeeping)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock" and not p.name.startswith("failures.shard-")}


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """A `folder` dataset of eight tiny videos, two without a face (failures.csv not empty)."""
    root = tmp_path_factory.mktemp("small")
    for k in range(3):
        U.write_video(root / "real" / f"r{k}.mp4", U.face_frames(2, (320, 240), seed=10 + k))
        U.write_video(root / "fake" / f"f{k}.mp4", U.face_frames(2, (320, 240), seed=20 + k))
    U.blank_video(root / "fake" / "blank.mp4", 2)
    U.blank_video(root / "real" / "empty room.mp4", 2)
    return root


@pytest.fixture(scope="module")
def six_copies(tmp_path_factory, face_video) -> Path:
    """Six copies of the 640x480 face video (~1 s each): runs long enough to be signalled,
    and every copy must give the same crops."""
    root = tmp_path_factory.mktemp("six")
    (root / "real").mkdir()
    for k in range(6):
        shutil.copy(face_video, root / "real" / f"v{k}.mp4")
    return root


def setup_here() -> int:
    """A stand-in for preprocess.py's face models: what each process sets up once."""
    return os.getpid()


def toy_process(job: jobs.Job, pid: int) -> jobs.Result:
    """A stand-in for preprocess.process_video: a video named bad* fails, the others get a folder."""
    v = job.video
    if v.video_id.startswith("bad"):
        return jobs.Result(job, "failed", "a bad one")
    meta = {"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": 1, "file": v.file.name,
            "set_up_in": pid}
    jobs.write_folder(job.out_dir, [("0.png", b"png"), ("meta.json", json.dumps(meta).encode())])
    return jobs.Result(job, "done", "", 1)


def test_pool_runs_any_process_function(tmp_path, capsys):
    """The job pool needs nothing of preprocess.py: a process function and its setup, both run in
    two worker processes, give the folders, index.csv and failures.csv; a rerun redoes nothing."""
    root = tmp_path / "mine"
    for name in ("a", "b", "c", "bad1"):
        U.touch(root / "real" / f"{name}.mp4")
    run = dict(n_frames=1, size=1, scale=1.0, detect_side=1, reference=False, out=tmp_path / "o", workers=2)
    assert jobs.run_dataset(toy_process, setup_here, "folder", root, **run) == \
        {"done": 3, "skipped": 0, "failed": 1, "total": 4}
    ds = tmp_path / "o" / "folder"
    metas = [json.loads((ds / "test" / "real" / n / "meta.json").read_text()) for n in "abc"]
    assert all(m["set_up_in"] != os.getpid() for m in metas)  # in the workers, not here
    assert sorted(r["video_id"] for r in U.read_csv(ds / "test" / "index.csv")) == ["a", "b", "c"]
    assert [(r["video_id"], r["reason"]) for r in U.read_csv(ds / "failures.csv")] == [("bad1", "a bad one")]
    assert "folder: done 3, skipped 0 (0 failed before), failed 1" in capsys.readouterr().out
    assert jobs.run_dataset(toy_process, setup_here, "folder", root, **run) == \
        {"done": 0, "skipped": 4, "failed": 0, "total": 4}


def test_shards_give_the_files_of_one_run(small_folder, tmp_path, capsys):
    """Three shards (the middle one a command in a SLURM array task, ids from 10) write the
    same crops, meta.json, index.csv and failures.csv as one run; a shard run twice and the
    closing run without --shard redo nothing."""
    one, parts = tmp_path / "one", tmp_path / "parts"
    args = ["--dataset", "folder", "--root", str(small_folder), "--workers", "1"]
    assert P.main(args + ["--out", str(one)]) == 0
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
             "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_COUNT": "3"}
    videos = layouts.list_videos("folder", small_folder)
    capsys.readouterr()
    for k in range(3):
        if k == 1:
            r = U.preprocess_cli(*args, "--out", parts, env=slurm)
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            out = r.stdout
            assert "shard 1/3 (from SLURM_ARRAY_TASK_ID=11 SLURM_ARRAY_TASK_MIN=10" in out
        else:
            assert P.main(args + ["--out", str(parts), "--shard", f"{k}/3"]) == 0
            out = capsys.readouterr().out
        mine = [v for v in videos if jobs.Shard(k, 3).owns((v.split, v.source, v.video_id))]
        assert f"(shard {k}/3: {len(mine)} of 8), 0 already done" in out, out
        assert (parts / "folder" / f"failures.shard-{k}-of-3.csv").exists() == \
            any(v.video_id in ("blank", "empty room") for v in mine)
    assert 0 < len(mine) < 8
    ref = tree(one / "folder")
    assert tree(parts / "folder") == ref
    assert len(U.read_csv(one / "folder" / "failures.csv")) == 2
    assert len(U.read_csv(one / "folder" / "test" / "index.csv")) == 6
    stamps = {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")}
    assert P.main(args + ["--out", str(parts), "--shard", "2/3"]) == 0
    assert f"{len(mine)} videos in" in (out := capsys.readouterr().out) and "0 to process" in out
    assert P.main(args + ["--out", str(parts)]) == 0
    assert "6 already done, 2 failed before (--retry-failed to redo), 0 to process" in \
        capsys.readouterr().out
    assert tree(parts / "folder") == ref and not list(parts.rglob("failures.shard-*"))
    assert {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")} == stamps


def test_slurm_array_variables_pick_the_shard():
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    assert jobs.shard_from_env(env)[0] == jobs.Shard(1, 3)
    assert jobs.shard_from_env({}) is None
    assert jobs.shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "16"})[0] == \
        jobs.Shard(0, 16)
    # --array=4-10:2 -> ids 4, 6, 8, 10 -> shards 0..3 of 4 (no COUNT: from MAX)
    assert jobs.shard_from_env({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "4",
                             "SLURM_ARRAY_TASK_MAX": "10", "SLURM_ARRAY_TASK_STEP": "2"})[0] == \
        jobs.Shard(2, 4)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=9 .*pass --shard K/N"):
        jobs.shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1",
                          "SLURM_ARRAY_TASK_COUNT": "3"})  # --array=1,4,9
    # the split is by (split, source, video id) alone: stable, and every video in one shard
    keys = [("test", "real", f"v{i}") for i in range(300)]
    counts = [sum(jobs.Shard(k, 4).owns(key) for key in keys) for k in range(4)]
    assert sum(counts) == 300 and min(counts) > 50
    assert [jobs.Shard(k, 4).owns(("train", "youtube", "000")) for k in range(4)] == \
        [False, False, False, True]  # sha1-based: the same on every machine and Python


def test_sigterm_stops_cleanly_and_the_rerun_finishes(six_copies, tmp_path):
    """SIGTERM (a scheduler's time limit) stops like Ctrl-C: one line, status 1, the videos in
    flight finished, no half folder; the rerun does only the rest and every copy of the video
    gives the same crops."""
    out = tmp_path / "o"
    real = out / "folder" / "test" / "real"
    cmd = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(six_copies),
           "--out", str(out), "--workers", "2", "--frames", "4"]
    proc = subprocess.Popen(cmd, cwd=U.REPO, env=U.NOT_SLURM, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(real.glob("*/meta.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == \
        "interrupted: finished videos are kept; run the same command again to continue"
    kept = {p.name: (p / "meta.json").stat().st_mtime_ns for p in real.iterdir()}
    assert all(not name.startswith(".") for name in kept)  # no temporary folder left
    assert 1 <= len(kept) <= 5 and not (out / "folder" / "failures.csv").exists()
    r = U.preprocess_cli(*cmd[2:], "--workers", "1")  # the same command (one worker: cheaper here)
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} already done, 0 failed before (--retry-failed to redo), " \
           f"{6 - len(kept)} to process" in r.stdout
    assert {n: (real / n / "meta.json").stat().st_mtime_ns for n in kept} == kept
    crops = {p.name: tree(p) for p in real.iterdir()}
    metas = {n: json.loads(c.pop("meta.json")) for n, c in crops.items()}
    assert len(crops) == 6 and len(crops["v0"]) == 4
    assert all(c == crops["v0"] for c in crops.values())
    assert all(m["frames"] == metas["v0"]["frames"] for m in metas.values())
    assert len(U.read_csv(out / "folder" / "test" / "index.csv")) == 6


def test_sigkill_leaves_no_orphan_workers(six_copies, tmp_path):
    """kill -9 of the main process (OOM killer, closed SSH session): its pool workers and the
    multiprocessing resource tracker exit within seconds instead of processing on."""
    cmd = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(six_copies),
           "--out", str(tmp_path / "o"), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=U.REPO, env=U.NOT_SLURM, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.time() + 60
        while len(U.live_children(proc.pid)) < 3 and time.time() < deadline:  # tracker + 2 workers
            time.sleep(0.05)
        time.sleep(0.5)  # the workers are loading models or processing videos
        kids = U.live_children(proc.pid)
        assert len(kids) >= 3, kids
        U.kill_and_wait(proc, kids, seconds=8)
        left = [pid for pid in kids if U.alive(pid)]
        assert not left, f"orphans still running after the main process was killed: {left}"
    finally:  # do not leave them to the other tests
        U.kill_all(proc, kids)


def test_full_disk_is_one_line_and_leaves_nothing_half_written(small_folder, tmp_path,
                                                                monkeypatch):
    """No space left while writing crops, then index.csv: one line each time, no temporary
    folder or file, no video recorded as failed for it, and the rerun finishes the rest
    without redoing a finished video."""
    out = tmp_path / "o"
    args = ["--dataset", "folder", "--root", str(small_folder), "--out", str(out),
            "--workers", "1", "--split", "test"]
    calls, save = [], jobs._save

    def full_disk_at_5th(path, data):
        calls.append(path)
        if len(calls) == 5:  # the second video's second crop
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        save(path, data)
    monkeypatch.setattr(jobs, "_save", full_disk_at_5th)
    with pytest.raises(SystemExit) as e:
        P.main(args)
    assert str(e.value) == f"error: no space left on device (writing {calls[-1]}); free some " \
        "space: finished videos are kept; run the same command again to continue"
    ds = out / "folder"
    folders = [p for p in ds.rglob("*") if p.is_dir() and p.parent.parent.name == "test"]
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    assert not [p for p in ds.rglob(".*") if p.name != ".lock"]
    assert not (ds / "failures.csv").exists() or \
        calls[-1].parent.name[len(".tmp-"):] not in (ds / "failures.csv").read_text()
    monkeypatch.setattr(jobs, "_save", save)
    stamp = (folders[0] / "meta.json").stat().st_mtime_ns

    real_write = files.atomic_write

    def index_disk_full(path, data):
        if Path(path).name == "index.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)
    monkeypatch.setattr(layouts, "atomic_write", index_disk_full)
    with pytest.raises(SystemExit, match=r"^error: no space left on device \(writing .*index.csv\)"):
        P.main(args)
    assert not (ds / "test" / "index.csv").exists()
    assert not [p for p in ds.rglob(".*") if p.name != ".lock"]
    monkeypatch.setattr(layouts, "atomic_write", real_write)
    assert P.main(args) == 0
    assert len(U.read_csv(ds / "test" / "index.csv")) == 6
    assert (folders[0] / "meta.json").stat().st_mtime_ns == stamp
