"""bench.py runs end to end (tiny model, few frames) and writes every figure the README quotes;
a wrong flag is a usage error (exit 2, no traceback)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tools import bench

ROOT = Path(bench.__file__).resolve().parent.parent


def test_bench_writes_every_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--model", "tiny", "--repeat", "1", "--frames", "4", "--preprocess-videos", "1",
                "--data-images", "4", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results) >= {"device", "precision", "forward", "precisions", "train_step", "preprocess", "data",
                            "video", "bottleneck", "recipe_minutes"}
    # the forward in both precisions on the CPU, ours beside OpenAI's; `forward` is the run's precision
    assert set(results["precisions"]) == {"fp32", "bf16"}
    assert results["forward"] == results["precisions"][results["precision"].split()[0]]
    for precision, f in results["precisions"].items():  # each figure is what its definition says
        assert f["precision"] == precision and f["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
        assert f["images_per_s"] == pytest.approx(f["batch_size"] / f["seconds"])
        assert f["tflop_per_s"] == pytest.approx(bench.VIT_L14_FLOPS * f["batch_size"] / f["seconds"] / 1e12)
        assert f["gemm_fraction"] == pytest.approx(f["tflop_per_s"] / f["gemm_tflop_per_s"])
        assert f["ratio_to_peer"] == pytest.approx(f["images_per_s"] / f["peer"]["images_per_s"])
    f = results["forward"]
    v = results["video"]  # whole evaluate.py --video runs: fp32, bf16, and --report
    assert set(v["seconds"]) == {"fp32", "bf16", "report"} and v["frames"] == 4
    assert v["bf16_speedup"] == pytest.approx(v["seconds"]["fp32"] / v["seconds"]["bf16"])
    assert v["report_cost"] == pytest.approx(v["seconds"]["report"] / v["seconds"][v["report_precision"]])
    step = results["train_step"]
    assert step["batch_size"] == 8
    for s in (step, step["checkpointing"]):
        assert s["images_per_s"] == pytest.approx(8 / s["seconds"])
        assert s["ratio_to_forward"] == pytest.approx(s["seconds"] / f["seconds"])
        assert 0 < s["peak_memory_mb"] <= s["peak_memory_total_mb"]
        assert sum(s["time_shares"].values()) == pytest.approx(1) and all(0 <= v <= 1 for v in s["time_shares"].values())
        assert s["time_shares"]["gemm"] > 0.05  # a ViT step is mostly matrix products, even a tiny one
    # recomputing the blocks in the backward keeps fewer activations
    assert step["checkpointing"]["peak_memory_mb"] <= step["peak_memory_mb"] * 1.5 + 50
    pre = results["preprocess"]
    assert pre["frames"] == 4 and pre["frame_size"] == [720, 1280]
    assert pre["speedup"] == pytest.approx(pre["frames_per_s"] / pre["reference_frames_per_s"])
    assert pre["frames_compared"] >= 3 and pre["keypoint_px"] < 2.0  # the same crops as the reference
    for case in ("small_faces", "typical_faces", "two_faces"):  # whole preprocess.py runs, one 4-frame video each
        c = pre[case]
        assert c["videos"] == 1 and c["frames"] == 4
        assert c["frames_per_s"] == pytest.approx(c["frames"] / c["seconds"])
        assert c["speedup"] == pytest.approx(c["reference_seconds"] / c["seconds"])
        assert c["runs_seconds"] == [c["seconds"]]  # --repeat 1: one run (by default the median of 4)
        assert c["crops"] >= 4 and c["reference_crops"] >= 4  # every frame has a face
    assert pre["small_faces"]["face_px"] < 100 < pre["typical_faces"]["face_px"]
    assert pre["typical_faces"]["people"] == [1] and pre["two_faces"]["people"] == [2]
    data = results["data"]
    assert 1 <= data["workers"] <= 8  # train.py's default, at most the CPU count
    assert data["loader_images_per_s_per_worker"] == pytest.approx(data["loader_images_per_s"] / data["workers"])
    assert data["images_per_s_per_worker"] > 1  # a 256 px crop's decode and augmentations take well under 1 s
    # the verdict follows from the two rates it compares
    step_ips, loader_ips = step["images_per_s"], data["loader_images_per_s"]
    b = results["bottleneck"]
    assert b["limited_by"] == ("cpu" if loader_ips >= step_ips else "loader")
    if b["limited_by"] == "loader":
        assert b["workers_needed"] == math.ceil(step_ips / data["loader_images_per_s_per_worker"])
    r = results["recipe"]
    assert r["frames_per_epoch"] == 115_200 and r["images_per_s"] == pytest.approx(min(step_ips, loader_ips))
    assert results["recipe_minutes"] == pytest.approx(r["epochs"] * r["frames_per_epoch"] / r["images_per_s"] / 60)
    printed = capsys.readouterr().out
    assert "| preprocess (1280x720, 1 core) |" in printed and "| bottleneck |" in printed
    assert "| forward (bf16, batch 8) |" in printed and "| `evaluate.py --video`, 4-frame 720p clip (tiny) |" in printed


def test_bad_flags_are_usage_errors():
    # both at once: each pays the interpreter's and torch's start-up
    flags = (["--device", "gpu"], ["--batch-size", "0"])
    runs = [subprocess.Popen([sys.executable, "-m", "tools.bench", *f], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for f in flags]
    for f, run in zip(flags, runs):
        _, err = run.communicate(timeout=120)
        assert run.returncode == 2, (f, err)
        assert "Traceback" not in err and f"argument {f[0]}:" in err.strip().splitlines()[-1]
