"""train.py on tiny synthetic crops with the tiny random ViT (CPU, fp32)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import clip_vit
import train
from util import checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory, make_tree) -> Path:
    """20 frames: 3 steps per epoch at batch 8, the last one a partial batch of 4."""
    return make_tree(tmp_path_factory.mktemp("small"), videos_per_source=2, frames=(0, 5), size=64, seed=1)


def run(tree: Path, out: Path, *args: str) -> nn.Module:
    return train.main(["--data", str(tree), "--out", str(out), *args])


def test_defaults_are_the_published_recipe_and_flags_override():
    cfg = train.parse_args([])
    assert (cfg.lr, cfg.min_lr, cfg.beta1, cfg.beta2, cfg.weight_decay) == (8e-5, 5e-5, 0.9, 0.999, 0.0)
    assert (cfg.batch_size, cfg.epochs, cfg.seed, cfg.frames) == (128, 10, 42, 32)
    assert (cfg.uniformity, cfg.alignment, cfg.slerp, cfg.norm, cfg.tuning, cfg.clip) == (0.5, 0.1, True, True, "ln", "ViT-L/14")
    assert cfg.sources == ["youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"] and not cfg.balanced
    cfg = train.parse_args(["--tuning", "linear-probe", "--no-norm", "--uniformity", "0", "--alignment", "0",
                            "--no-slerp", "--sources", "youtube", "FaceSwap", "--batch-size", "64"])
    assert (cfg.tuning, cfg.norm, cfg.uniformity, cfg.alignment, cfg.slerp) == ("linear-probe", False, 0.0, 0.0, False)
    assert cfg.sources == ["youtube", "FaceSwap"] and cfg.batch_size == 64
    with pytest.raises(SystemExit):
        train.parse_args(["--tuning", "lora"])
    # cosine per step from lr to min_lr, no warm-up
    assert train.get_lr(0, 100, cfg) == cfg.lr and train.get_lr(99, 100, cfg) == pytest.approx(cfg.min_lr)


def test_no_data_names_the_preprocess_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `python train.py` with no arguments, no data/ here
    with pytest.raises(SystemExit, match=r"python preprocess.py --dataset ff\+\+ --root datasets/FaceForensics\+\+"):
        train.main([])


def fixed_batch(tree: Path):
    import data
    ds = data.FrameDataset(data.load_videos(tree), data.eval_transform())
    images, labels, _ = next(iter(data.make_loader(ds, 40)))
    return images, labels


def test_ln_tuning_learns_and_changes_only_layernorms_and_head(train_tree, fast_flags, tmp_path, monkeypatch):
    cfg = train.parse_args(fast_flags)
    start = clip_vit.build_detector("tiny")
    images, labels = fixed_batch(train_tree)

    def objective(detector):
        with torch.no_grad():
            features = detector.features(images)
            return train.objective(features, detector.head(features), labels, cfg)[0].item()

    torch.manual_seed(cfg.seed)  # the head train.py starts from
    start.head.reset_parameters()
    before = objective(start)
    hashed, base_sha256 = [], checkpoint.base_sha256
    monkeypatch.setattr(checkpoint, "base_sha256", lambda *a: hashed.append(1) or base_sha256(*a))
    trained = run(train_tree, tmp_path, *fast_flags, "--epochs", "2", "--no-val", "--name", "ln")
    assert len(hashed) == 1  # the frozen weights are hashed once per run, not at every save
    monkeypatch.undo()
    assert objective(trained) < before - 0.05, (before, objective(trained))

    start_sd, end_sd = start.state_dict(), trained.state_dict()
    ln_names = {f"{n}.{p}" for n, m in start.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert len(ln_names) == 2 * (2 + 2 * 2)  # ln_pre, ln_post, ln_1/ln_2 of 2 blocks
    for name, tensor in end_sd.items():
        if name in ln_names or name.startswith("head."):
            assert not torch.equal(tensor, start_sd[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, start_sd[name]), f"frozen {name} changed"
    run_dir = tmp_path / "ln"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "log.jsonl", "last.pt", "best.pt"}
    assert json.loads((run_dir / "config.json").read_text())["clip"] == "tiny"
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert set(ckpt["state_dict"]) == ln_names | {"head.weight", "head.bias"}
    assert ckpt["step"] == 10 and ckpt["config"]["normalize"] is True
    reloaded = clip_vit.load_detector(run_dir / "best.pt")  # evaluate.py's way in
    assert all(torch.equal(v, end_sd[k]) for k, v in reloaded.state_dict().items())


def test_interrupted_and_resumed_run_is_bitwise_identical(small, fast_flags, tmp_path):
    run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "full")
    with pytest.raises(SystemExit, match="already holds a run"):
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "full")

    def log(run_name):
        lines = [json.loads(l) for l in (tmp_path / run_name / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in lines]

    for cut in (4, 3):  # in the middle of epoch 1; exactly at the end of epoch 0
        name = f"cut{cut}"
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", name, "--stop-after", str(cut))
        assert torch.load(tmp_path / name / "last.pt", weights_only=True)["step"] == cut
        train.main(["--resume", str(tmp_path / name)])  # config.json holds the rest
        for file in ("last.pt", "best.pt"):
            a = torch.load(tmp_path / "full" / file, weights_only=True)
            b = torch.load(tmp_path / name / file, weights_only=True)
            assert a["step"] == b["step"]
            for k in a["state_dict"]:
                assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (cut, file, k)
        a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True)["optimizer"]["state"] for r in ("full", name))
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
        assert log("full") == log(name)  # every logged loss, lr and val AUROC the same


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(small, fast_flags, tmp_path, monkeypatch):
    calls = []
    objective = train.objective

    def poisoned(features, logits, labels, cfg):
        loss, parts = objective(features, logits, labels, cfg)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 4 else loss), parts

    monkeypatch.setattr(train, "objective", poisoned)
    # the 4th step's loss is NaN; last.pt was saved after step 2 (--save-every) and 3 (epoch end)
    with pytest.raises(SystemExit, match=r"loss is nan at step 4 .*Last good checkpoint: .*last.pt \(step 3\)"):
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "nan", "--save-every", "2", "--no-val")
    ckpt = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


DDP_SCRIPT = """
import os, signal, sys
import torch
import torch.distributed as dist
sys.path.insert(0, {root!r})
import train

dist.init_process_group("gloo")  # once for the three runs: train.py uses a process group that is there
rank, out = dist.get_rank(), os.path.dirname(os.path.abspath(__file__))
detector = train.main(sys.argv[1:] + ["--name", "full"])
torch.save(detector.state_dict(), os.path.join(out, f"full{{rank}}.pt"))

objective, calls = train.objective, []
def signalled(*args):  # SIGTERM to rank 1 alone, during the 3rd step's forward
    calls.append(1)
    if rank == 1 and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return objective(*args)
train.objective = signalled
try:
    train.main(sys.argv[1:] + ["--name", "cut"])
except SystemExit as e:
    print(f"rank {{rank}} exit {{e.code}}", flush=True)
train.objective = objective
detector = train.main(["--resume", os.path.join(out, "cut")])
torch.save(detector.state_dict(), os.path.join(out, f"cut{{rank}}.pt"))
dist.destroy_process_group()
"""


def test_torchrun_two_processes_train_the_single_process_recipe_and_stop_and_resume_together(small, fast_flags, tmp_path):
    # 10 frames at batch 3: global batches 3, 3, 3, 1 -> shares 2+1, 2+1, 2+1 and 1+0 (an empty share)
    args = ["--data", str(small), "--out", str(tmp_path), *fast_flags, "--batch-size", "3", "--frames", "1",
            "--epochs", "2", "--no-val"]
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) x batch 2/1, 4 steps/epoch" in result.stdout  # the effective batch stays 3
    # rank 1 alone was signalled; both stopped before the 3rd update, last.pt holds step 2
    assert "rank 0 exit 143" in result.stdout and "rank 1 exit 143" in result.stdout
    assert (f"stopped by SIGTERM at step 2/8; {tmp_path / 'cut' / 'last.pt'} holds it. Continue with: "
            f"torchrun --nproc_per_node=2 train.py --resume {tmp_path / 'cut'}") in result.stderr
    full0, full1, cut0, cut1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True)
                                for r in ("full0", "full1", "cut0", "cut1"))
    for k in full0:  # the processes agree, and the resumed run is exact
        assert torch.equal(full0[k], full1[k]) and torch.equal(full0[k], cut0[k]) and torch.equal(cut0[k], cut1[k]), k
    assert torch.load(tmp_path / "full" / "last.pt", weights_only=True)["step"] == 8
    # one process, the same recipe: the same weights up to the order of float sums
    single = run(small, tmp_path, *args[4:], "--name", "single").state_dict()
    start = clip_vit.build_detector("tiny").state_dict()
    for k in full0:
        assert (full0[k] - single[k]).norm() <= 1e-5 * single[k].norm(), (k, (full0[k] - single[k]).norm())
    assert not torch.equal(single["visual.ln_post.weight"], start["visual.ln_post.weight"])


def test_vit_l14_checkpoint_is_under_1_mb(tmp_path):
    with torch.device("meta"):
        visual = clip_vit.VisionTransformer(224, 14, 1024, 24, 16, 768)
    visual = visual.to_empty(device="cpu")  # real memory, no random init of 304M weights
    for p in visual.parameters():
        p.data.zero_()
    detector = clip_vit.DeepfakeDetector(visual)
    assert clip_vit.set_trainable(detector, "ln") == 102_400 + 2_050  # 50 LayerNorms (102,400) + Linear(1024, 2)
    path = tmp_path / "best.pt"
    train.save_model(path, detector, train.TrainConfig(), step=0)
    assert path.stat().st_size < 1_000_000, path.stat().st_size
    ckpt = checkpoint.load_checkpoint(path)  # weights_only=True
    assert sum(t.numel() for t in ckpt["state_dict"].values()) == 104_450
    assert ckpt["config"]["clip"] == "ViT-L/14" and ckpt["config"]["normalize"] is True
