"""util/jobs.py via preprocess.py: shards, SLURM arrays, kill -9, SIGTERM, a full disk, resume."""
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
    """Every output file below `folder` (not the lock or the shards' failure files: bookkeeping)."""
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
    """Six copies of the 640x480 face video: a run long enough to be signalled; equal crops."""
    root = tmp_path_factory.mktemp("six")
    (root / "real").mkdir()
    for k in range(6):
        shutil.copy(face_video, root / "real" / f"v{k}.mp4")
    return root


def test_shards_give_the_files_of_one_run(small_folder, tmp_path, monkeypatch):
    """Three shards (one a SLURM array task) write one run's files; reruns redo nothing."""
    one, parts = tmp_path / "one", tmp_path / "parts"
    args = ["--dataset", "folder", "--root", str(small_folder), "--workers", "1"]
    assert P.main(args + ["--out", str(one)]) == 0
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "12"}
    with monkeypatch.context() as env:
        for name, value in slurm.items():
            env.setenv(name, value)
        assert P.main(args + ["--out", str(parts)]) == 0  # shard 1/3
    for k in (0, 2):
        assert P.main(args + ["--out", str(parts), "--shard", f"{k}/3"]) == 0
    keys = [(v.split, v.source, v.video_id) for v in layouts.list_videos("folder", small_folder)]
    for k in range(3):  # each shard's failures in its own file
        failed = [key for key in keys if jobs.Shard(k, 3).owns(key) and key[2] in ("blank", "empty room")]
        assert (parts / "folder" / f"failures.shard-{k}-of-3.csv").exists() == bool(failed)
    ref = tree(one / "folder")
    assert tree(parts / "folder") == ref
    assert len(U.read_csv(one / "folder" / "failures.csv")) == 2
    assert len(U.read_csv(one / "folder" / "test" / "index.csv")) == 6
    stamps = {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")}
    assert P.main(args + ["--out", str(parts), "--shard", "2/3"]) == 0
    assert P.main(args + ["--out", str(parts)]) == 0  # folds the shards' failure files in
    assert tree(parts / "folder") == ref and not list(parts.rglob("failures.shard-*"))
    assert {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")} == stamps


@pytest.mark.parametrize("env, shard", [
    ({}, (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "12"}, (1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "16"}, (0, 16)),
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "10",
      "SLURM_ARRAY_TASK_STEP": "2"}, (2, 4)),  # --array=4-10:2: ids 4, 6, 8, 10
    ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, None),  # 1,4,9
])
def test_slurm_array_variables_pick_the_shard(env, shard):
    assert jobs.shard_for(jobs.Shard(0, 2), env) == jobs.Shard(0, 2)  # --shard wins
    if shard is None:
        with pytest.raises(ValueError):
            jobs.shard_for(None, env)
    else:
        assert jobs.shard_for(None, env) == jobs.Shard(*shard)
    # every video in one part, by (split, source, video id) alone: the same on every machine
    owners = [[k for k in range(4) if jobs.Shard(k, 4).owns(("test", "real", f"v{i}"))] for i in range(300)]
    assert all(len(o) == 1 for o in owners) and min(owners.count([k]) for k in range(4)) > 50
    assert [k for k in range(4) if jobs.Shard(k, 4).owns(("train", "youtube", "000"))] == [3]


def test_killed_or_stopped_run_ends_cleanly_and_the_rerun_finishes(six_copies, tmp_path):
    """kill -9 of the main process: its workers exit within seconds. SIGTERM stops like Ctrl-C (status
    1, no half folder); the rerun does only the rest, and every copy gives the same crops."""
    out = tmp_path / "o"
    real = out / "folder" / "test" / "real"
    cmd = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(six_copies),
           "--out", str(out), "--workers", "2", "--frames", "4"]
    proc = subprocess.Popen(cmd, cwd=U.REPO, env=U.NOT_SLURM, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.time() + 60
        while len(U.live_children(proc.pid)) < 3 and time.time() < deadline:  # tracker + 2 workers
            time.sleep(0.05)
        kids = U.live_children(proc.pid)
        assert len(kids) >= 3, kids
        U.kill_and_wait(proc, kids, seconds=8)
        assert not [pid for pid in kids if U.alive(pid)], "orphans still running"
    finally:  # do not leave them to the other tests
        U.kill_all(proc, kids)
    shutil.rmtree(out, ignore_errors=True)  # a fresh start for the SIGTERM run
    proc = subprocess.Popen(cmd, cwd=U.REPO, env=U.NOT_SLURM, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not list(real.glob("*/meta.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    kept = {p.name: (p / "meta.json").stat().st_mtime_ns for p in real.iterdir()}
    assert all(not name.startswith(".") for name in kept)  # no hidden folder left
    assert 1 <= len(kept) <= 5 and not (out / "folder" / "failures.csv").exists()
    assert P.main(cmd[2:] + ["--workers", "1"]) == 0  # the same command (one worker: cheaper here)
    assert {n: (real / n / "meta.json").stat().st_mtime_ns for n in kept} == kept
    crops = {p.name: tree(p) for p in real.iterdir()}
    metas = {n: json.loads(c.pop("meta.json")) for n, c in crops.items()}
    assert len(crops) == 6 and len(crops["v0"]) == 4 and all(c == crops["v0"] for c in crops.values())
    assert all(m["frames"] == metas["v0"]["frames"] for m in metas.values())
    assert len(U.read_csv(out / "folder" / "test" / "index.csv")) == 6


def test_full_disk_is_one_line_and_leaves_nothing_half_written(small_folder, tmp_path, monkeypatch):
    """A full disk at a crop, then at index.csv: one line naming the file, nothing half written."""
    out, calls, save = tmp_path / "o", [], jobs._save
    args = ["--dataset", "folder", "--root", str(small_folder), "--out", str(out), "--workers", "1"]

    def crops_disk_full(path, data):
        calls.append(path)
        if len(calls) == 5:  # the second video's second crop
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        save(path, data)

    def index_disk_full(path, data):
        if Path(path).name == "index.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        files.atomic_write(path, data)
    ds = out / "folder"
    for name, fault, named in ("_save", crops_disk_full, "1.png"), ("atomic_write", index_disk_full, "index"):
        with monkeypatch.context() as patch, pytest.raises(SystemExit) as e:
            patch.setattr(jobs, name, fault)
            P.main(args)
        assert "\n" not in str(e.value) and named in str(e.value)
        assert not [p for p in ds.rglob(".*") if p.name != ".lock"]  # no hidden folder or file
        assert calls[-1].parent.name[len(".tmp-"):] not in (ds / "failures.csv").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in ds.rglob("meta.json")}
    assert P.main(args) == 0
    assert len(U.read_csv(ds / "test" / "index.csv")) == 6
    assert stamps.items() <= {p: p.stat().st_mtime_ns for p in ds.rglob("meta.json")}.items()
