"""bench.py runs end to end (tiny model, few frames) and writes every figure the README quotes."""
import json

import bench


def test_bench_writes_every_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--repeat", "1", "--frames", "4", "--data-images", "4", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results) >= {"device", "forward", "train_step", "preprocess", "data"}
    assert results["forward"]["images_per_s"] > 0 and results["forward"]["gemm_fraction"] > 0
    step = results["train_step"]
    assert step["images_per_s"] > 0 and step["ratio_to_forward"] > 0 and step["peak_memory_mb"] > 0
    assert step["checkpointing"]["images_per_s"] > 0
    assert abs(sum(step["time_shares"].values()) - 1) < 1e-6 and step["time_shares"]["gemm"] > 0
    pre = results["preprocess"]
    assert pre["frames"] == 4 and pre["frame_size"] == [720, 1280]
    assert abs(pre["speedup"] - pre["frames_per_s"] / pre["reference_frames_per_s"]) < 1e-9
    assert pre["frames_compared"] >= 3 and pre["keypoint_px"] < 2.0  # the same crops as the reference
    assert results["data"]["images_per_s_per_worker"] > 0
    assert "| preprocess (1280x720, 1 core) |" in capsys.readouterr().out
