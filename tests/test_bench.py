"""bench.py runs end to end (tiny model, few frames) and writes every figure the README quotes;
a wrong flag is a usage error (exit 2, no traceback)."""
import json
import subprocess
import sys
from pathlib import Path

from tools import bench

ROOT = Path(bench.__file__).resolve().parent.parent


def test_bench_writes_every_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--model", "tiny", "--repeat", "1", "--frames", "4", "--preprocess-videos", "1",
                "--data-images", "4", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results) >= {"device", "forward", "train_step", "preprocess", "data", "bottleneck", "recipe_minutes"}
    assert results["forward"]["images_per_s"] > 0 and results["forward"]["gemm_fraction"] > 0
    assert results["forward"]["dtype"] == "float32"  # bf16 only on CUDA
    step = results["train_step"]
    assert step["batch_size"] == 8 and step["images_per_s"] > 0 and step["ratio_to_forward"] > 0
    assert step["peak_memory_mb"] > 0 and step["peak_memory_total_mb"] >= step["peak_memory_mb"]
    assert step["checkpointing"]["images_per_s"] > 0
    assert abs(sum(step["time_shares"].values()) - 1) < 1e-6 and step["time_shares"]["gemm"] > 0
    pre = results["preprocess"]
    assert pre["frames"] == 4 and pre["frame_size"] == [720, 1280]
    assert abs(pre["speedup"] - pre["frames_per_s"] / pre["reference_frames_per_s"]) < 1e-9
    assert pre["frames_compared"] >= 3 and pre["keypoint_px"] < 2.0  # the same crops as the reference
    for case in ("small_faces", "typical_faces", "two_faces"):  # whole preprocess.py runs, one 4-frame video each
        c = pre[case]
        assert c["videos"] == 1 and c["frames"] == 4 and c["seconds"] > 0 and c["reference_seconds"] > 0
        assert abs(c["speedup"] - c["reference_seconds"] / c["seconds"]) < 1e-9
        assert c["runs_seconds"] == [c["seconds"]]  # --repeat 1: one run (by default the median of 4)
    assert pre["small_faces"]["face_px"] < 100 < pre["typical_faces"]["face_px"]
    assert pre["typical_faces"]["people"] == [1] and pre["two_faces"]["people"] == [2]
    data = results["data"]
    assert data["images_per_s_per_worker"] > 0 and data["loader_images_per_s"] > 0
    assert 1 <= data["workers"] <= 8  # train.py's default, at most the CPU count
    assert results["bottleneck"]["limited_by"] in ("loader", "cpu") and results["bottleneck"]["verdict"]
    assert results["recipe_minutes"] > 0 and results["recipe"]["frames_per_epoch"] == 115_200
    printed = capsys.readouterr().out
    assert "| preprocess (1280x720, 1 core) |" in printed and "| bottleneck |" in printed


def test_bad_flags_are_usage_errors():
    # both at once: each pays the interpreter's and torch's start-up
    flags = (["--device", "gpu"], ["--batch-size", "0"])
    runs = [subprocess.Popen([sys.executable, "-m", "tools.bench", *f], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for f in flags]
    for f, run in zip(flags, runs):
        _, err = run.communicate(timeout=120)
        assert run.returncode == 2, (f, err)
        assert "Traceback" not in err and f"argument {f[0]}:" in err.strip().splitlines()[-1]
