"""The README's smoke run end to end: preprocess a tiny FF++ (--limit), train the tiny model,
evaluate the checkpoint on FF++ test and on a single video."""
import csv
import json
import shutil
from pathlib import Path

import _video_utils as U
from util.layouts import FFPP_SOURCES
import evaluate
import preprocess
import train

# the tests compare p_fake with fp32 references: auto would take bf16 on a CPU with AMX
FP32 = ["--precision", "fp32"]

SPLITS = {"train": [["000", "001"], ["002", "003"]], "val": [["004", "005"]], "test": [["006", "007"]]}
METHODS = FFPP_SOURCES[1:]  # the paper's four manipulations


def tiny_ffpp(root: Path) -> Path:
    """FF++'s official layout with 8 real and 32 fake videos (two different astronaut clips)."""
    clips = [U.write_video(root / f"clip{k}.mp4", U.face_frames(3, (320, 240), seed=k)) for k in range(2)]
    for split, pairs in SPLITS.items():
        (root / f"{split}.json").write_text(json.dumps(pairs))
        for a, b in pairs:
            for target, source in ((a, b), (b, a)):
                real = root / f"original_sequences/youtube/c23/videos/{target}.mp4"
                real.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(clips[0], real)
                for method in METHODS:
                    fake = root / f"manipulated_sequences/{method}/c23/videos/{target}_{source}.mp4"
                    fake.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(clips[1], fake)
    return clips[1]


def test_readme_smoke_run(tmp_path, capsys):
    video = tiny_ffpp(tmp_path / "FaceForensics++")
    data, runs = tmp_path / "data-mini", tmp_path / "runs"
    assert preprocess.main(["--dataset", "ff++", "--root", str(tmp_path / "FaceForensics++"),
                            "--out", str(data), "--frames", "3", "--limit", "1", "--workers", "1"]) == 0
    for split in SPLITS:
        with open(data / "ff++" / split / "index.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["source"] for r in rows) == sorted(["youtube", *METHODS])  # --limit 1: one per source

    train.main(["--data", str(data), "--clip", "tiny", "--epochs", "2", "--batch-size", "5", "--workers", "0",
                "--out", str(runs), "--name", "smoke"])
    best = runs / "smoke" / "best.pt"
    assert best.is_file() and (runs / "smoke" / "last.pt").is_file()
    epochs = [json.loads(line) for line in (runs / "smoke" / "log.jsonl").read_text().splitlines()
              if "epoch_done" in line]
    assert len(epochs) == 2 and all(e["val_video_auroc"] is not None for e in epochs)

    out = tmp_path / "eval"
    evaluate.main([*FP32, "--dataset", "ff++", "--checkpoint", str(best), "--data", str(data),
                   "--out", str(out)])
    metrics = json.loads((out / "ff++" / "metrics.json").read_text())
    assert metrics["video"]["n"] == 5 and set(metrics["per_source"]) == set(METHODS)
    assert (out / "ff++" / "roc.png").is_file()

    capsys.readouterr()
    evaluate.main([*FP32, "--video", str(video), "--checkpoint", str(best)])
    assert "p_fake" in capsys.readouterr().out
