"""tools/bench.py end to end on a tiny configuration: it prints and writes every documented JSON key
(README, `--help`); a bad flag or a missing package ends in one line."""
import json
import sys

import pytest

from tools import bench

FORWARD = {"images_per_s", "seconds", "batch_size", "precision", "dtype", "tflop_per_s",
           "gemm_tflop_per_s", "gemm_fraction", "peer", "ratio_to_peer"}
STEP = {"images_per_s", "ratio_to_forward", "seconds", "peak_memory_mb", "peak_memory_total_mb",
        "time_shares"}
DATA = {"images_per_s_per_worker", "workers", "loader_batch_size", "loader_images", "loader_images_per_s",
        "loader_images_per_s_per_worker"}
COMPILED = {"images_per_s", "seconds", "speedup", "tflop_per_s", "gemm_fraction", "compile_s",
            "pays_after_images"}
RECIPE = {"model", "epochs", "frames_per_epoch", "images_per_s", "limited_by", "minutes"}


def test_tiny_run_writes_every_key(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--model", "tiny", "--repeat", "1", "--data-images", "4",
                "--parts", "forward,train_step,data", "--compile", "--json", str(out)])
    results = json.loads(out.read_text(), parse_constant=pytest.fail)  # no NaN or infinity anywhere
    assert json.loads(capsys.readouterr().out) == results  # printed and written alike
    assert set(results) == {"device", "batch_size", "precision", "precisions", "forward", "train_step",
                            "data", "bottleneck", "recipe", "recipe_minutes"}
    assert set(results["precisions"]) == {"fp32", "bf16"}  # the CPU times both, side by side
    for precision, f in results["precisions"].items():
        assert set(f) == FORWARD | {"compiled"} and f["precision"] == precision
        assert set(f["compiled"]) == COMPILED and f["compiled"]["compile_s"] > 0  # beside the eager figures
        assert set(f["peer"]) == {"images_per_s", "seconds"}  # OpenAI's tower beside ours
    assert results["forward"] == results["precisions"][results["precision"].split()[0]]
    step = results["train_step"]
    assert set(step) == STEP | {"batch_size", "precision", "checkpointing"}
    assert set(step["checkpointing"]) == STEP
    for s in (step, step["checkpointing"]):
        assert set(s["time_shares"]) == {"gemm", "attention", "other"}
        assert s["time_shares"]["gemm"] > 0  # the profiler finds the matrix products
        assert 0 < s["peak_memory_mb"] < s["peak_memory_total_mb"]
    assert set(results["data"]) == DATA and results["data"]["workers"] >= 1
    assert set(results["bottleneck"]) == {"limited_by", "workers_needed", "verdict"}
    assert results["bottleneck"]["limited_by"] in ("cpu", "loader")
    assert set(results["recipe"]) == RECIPE
    assert step["images_per_s"] > 0 and results["data"]["loader_images_per_s"] > 0


@pytest.mark.parametrize("argv, status, named", [
    (["--device", "gpu"], 2, "--device"),
    (["--device", "cuda:99"], 2, "--device"),
    (["--batch-size", "0"], 2, "--batch-size"),
    (["--repeat", "two"], 2, "--repeat"),
    (["--parts", "forward,nope"], 2, "--parts"),
    (["--precision", "fp16"], 2, "--precision"),
    (["--model", "vit-h-14"], 2, "--model"),
    (["--frames", "0"], 2, "--frames"),
    (["--json", "no_such_folder/bench.json"], 2, "--json"),
    (["--video", "no_such_video.mp4"], 2, "--video"),
    (["--video", __file__], 2, "--video"),  # not a video
    (["--parts", "preprocess", "--frames", "1"], 1, "--parts"),  # without scikit-image: which parts need it
])
def test_bad_input_ends_in_one_line(argv, status, named, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "skimage", None)  # a missing package: no other way to cause it
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cpu", *argv])
    code = e.value.code  # argparse: 2 after its message; main's one line: the message (exit status 1)
    lines = code.splitlines() if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()
    assert (1 if isinstance(code, str) else code) == status
    assert named in lines[-1] and (len(lines) == 1 or lines[-2].startswith("usage:"))
