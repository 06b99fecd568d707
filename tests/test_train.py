"""train.py on tiny synthetic crops with the tiny random ViT (CPU): the recipe, what trains, exact
resume (fp32 and bf16), torchrun, and the command line on bad input and on interruptions: one line
naming the flag or file, the right exit status, and a run folder that is still whole after."""
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
import torch
import torch.nn as nn
import torch.nn.functional as F

import clip_vit
import data
import train
from util import calibration, checkpoint
from util.layouts import load_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory, make_tree) -> Path:
    """20 frames: 2 steps per epoch at batch 8."""
    return make_tree(tmp_path_factory.mktemp("small"), videos_per_source=2, frames=(0, 5), size=64, seed=1)


def run(tree: Path, out: Path, *args: str) -> nn.Module:
    return train.main(["--data", str(tree), "--out", str(out), *args])


def ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    a, b = ckpt(a), ckpt(b)
    same = all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    return a["step"] == b["step"] and same


def test_defaults_are_the_published_recipe_and_flags_override():
    cfg = train.parse_args([])
    assert (cfg.lr, cfg.min_lr, cfg.beta1, cfg.beta2, cfg.weight_decay) == (8e-5, 5e-5, 0.9, 0.999, 0.0)
    assert (cfg.batch_size, cfg.epochs, cfg.seed, cfg.frames, cfg.clip) == (128, 10, 42, 32, "ViT-L/14")
    assert (cfg.uniformity, cfg.alignment, cfg.slerp, cfg.norm, cfg.tuning) == (0.5, 0.1, True, True, "ln")
    assert cfg.sources == ["youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    assert not cfg.balanced
    cfg = train.parse_args(["--tuning", "linear-probe", "--no-norm", "--uniformity", "0", "--no-slerp",
                            "--sources", "youtube", "FaceSwap", "--batch-size", "64"])
    assert (cfg.tuning, cfg.norm, cfg.uniformity, cfg.slerp) == ("linear-probe", False, 0.0, False)
    assert cfg.batch_size == 64
    assert cfg.sources == ["youtube", "FaceSwap"]
    # cosine per step from lr to min_lr, no warm-up
    assert train.get_lr(0, 100, cfg) == cfg.lr and train.get_lr(99, 100, cfg) == pytest.approx(cfg.min_lr)


def test_ln_tuning_learns_and_changes_only_layernorms_and_head(small, fast_flags, tmp_path):
    start = clip_vit.build_detector("tiny")
    videos = load_videos(small)
    images = torch.stack([clip_vit.image_transform(224)(data.read_rgb(f)) for v in videos for f in v.frames])
    labels = torch.tensor([v.label for v in videos for _ in v.frames])

    def ce(detector):
        with torch.no_grad():
            return F.cross_entropy(detector(images), labels).item()

    torch.manual_seed(42)  # the head train.py starts from
    start.head.reset_parameters()
    trained = run(small, tmp_path, *fast_flags, "--epochs", "3", "--no-val", "--name", "ln")
    assert ce(trained) < ce(start) - 0.02, (ce(start), ce(trained))  # measured: 0.750 -> 0.694
    start_sd, end_sd = start.state_dict(), trained.state_dict()
    ln = {f"{n}.{p}" for n, m in start.named_modules() if isinstance(m, nn.LayerNorm)
          for p in ("weight", "bias")}
    assert len(ln) == 2 * (2 + 2 * 2)  # ln_pre, ln_post, ln_1/ln_2 of 2 blocks
    for name, tensor in end_sd.items():
        trains = name in ln or name.startswith("head.")
        assert torch.equal(tensor, start_sd[name]) != trains, name
    run_dir = tmp_path / "ln"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "log.jsonl", "last.pt", "best.pt"}
    last = ckpt(run_dir / "last.pt")
    assert set(last["state_dict"]) == ln | {"head.weight", "head.bias"} and last["step"] == 6
    reloaded = clip_vit.load_detector(run_dir / "best.pt")  # evaluate.py's way in
    assert all(torch.equal(v, end_sd[k]) for k, v in reloaded.state_dict().items())


def log(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in lines]


def test_interrupted_and_resumed_run_is_bitwise_identical(small, fast_flags, tmp_path):
    run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "full")
    for cut in (3, 2):  # in the middle of epoch 1; exactly at the end of epoch 0
        name = f"cut{cut}"
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", name, "--stop-after", str(cut))
        stopped = ckpt(tmp_path / name / "last.pt")
        # the val videos' scores belong to the weights that scored them: only at an epoch's end
        assert stopped["step"] == cut and (calibration.KEY in stopped) == (cut == 2)
        train.main(["--resume", str(tmp_path / name)])  # config.json holds the rest
        for file in ("last.pt", "best.pt"):
            assert same_weights(tmp_path / "full" / file, tmp_path / name / file), (cut, file)
            key = calibration.KEY
            assert ckpt(tmp_path / "full" / file)[key] == ckpt(tmp_path / name / file)[key]
        a, b = (ckpt(tmp_path / r / "last.pt")["optimizer"]["state"] for r in ("full", name))
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
        assert log(tmp_path / "full") == log(tmp_path / name)  # every logged loss, lr and val AUROC


def test_bf16_run_records_its_precision_and_resumes_bitwise(small, fast_flags, tmp_path, capsys):
    bf16 = (*fast_flags, "--precision", "bf16", "--epochs", "2", "--no-val")
    run(small, tmp_path, *bf16, "--name", "full")
    assert "precision bf16" in capsys.readouterr().out.splitlines()[0]  # the first line says it
    run(small, tmp_path, *bf16, "--name", "cut", "--stop-after", "3")
    train.main(["--resume", str(tmp_path / "cut")])  # keeps bf16 without being told
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["precision"] == "bf16"
    assert ckpt(tmp_path / "cut" / "last.pt")["config"]["precision"] == "bf16"
    assert same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")
    # auto is recorded as what it resolved to, so that a resume elsewhere computes the same way
    run(small, tmp_path, *fast_flags, "--precision", "auto", "--name", "auto", "--stop-after", "1")
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["precision"] in ("fp32", "bf16")


def test_a_diverging_run_stops_before_the_update_naming_the_last_good_checkpoint(small, fast_flags, tmp_path):
    # lr 1e30: the first update throws the weights far enough for the next loss to be NaN or inf
    with pytest.raises(SystemExit) as e:
        run(small, tmp_path, *fast_flags, "--epochs", "3", "--name", "nan", "--save-every", "1", "--no-val",
            "--lr", "1e30", "--min-lr", "1e30")
    last = ckpt(tmp_path / "nan" / "last.pt")
    assert str(tmp_path / "nan" / "last.pt") in e.value.code and "\n" not in e.value.code
    assert last["step"] >= 1 and f"step {last['step']}" in e.value.code
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


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

step, calls = train.train_step, []
def signalled(*args):  # SIGTERM to rank 1 alone, before its 3rd step
    calls.append(1)
    if rank == 1 and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return step(*args)
train.train_step = signalled
try:
    train.main(sys.argv[1:] + ["--name", "cut"])
except SystemExit as e:
    dist.barrier()  # rank 0 has written last.pt
    last = torch.load(os.path.join(out, "cut", "last.pt"), weights_only=True)["step"]
    print(f"rank {{rank}} exit {{e.code}} at {{last}}", flush=True)
train.train_step = step
detector = train.main(["--resume", os.path.join(out, "cut")])
torch.save(detector.state_dict(), os.path.join(out, f"cut{{rank}}.pt"))
dist.destroy_process_group()
"""


def test_torchrun_two_processes_train_the_single_process_model_and_stop_together(small, fast_flags, tmp_path):
    # 10 frames at batch 3: 3 global batches an epoch, shares 2 + 1; validation shared over the ranks
    args = ["--data", str(small), "--out", str(tmp_path), *fast_flags, "--batch-size", "3", "--frames", "1",
            "--epochs", "2"]
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *args]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rank 1 alone was signalled; both stopped before the 3rd update, last.pt holds step 2
    assert "rank 0 exit 143 at 2" in result.stdout and "rank 1 exit 143 at 2" in result.stdout
    assert f"torchrun --nproc_per_node=2 train.py --resume {tmp_path / 'cut'}" in result.stderr
    full0, full1, cut0, cut1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True)
                                for r in ("full0", "full1", "cut0", "cut1"))
    for k in full0:  # the processes agree, and the resumed run is exact
        assert all(torch.equal(full0[k], other[k]) for other in (full1, cut0, cut1)), k
    # one process, the same recipe: the same weights and val scores up to the order of float sums
    single = run(small, tmp_path, *args[4:], "--name", "single").state_dict()
    start = clip_vit.build_detector("tiny").state_dict()
    for k in full0:
        assert (full0[k] - single[k]).norm() <= 1e-5 * single[k].norm(), (k, (full0[k] - single[k]).norm())
    assert not torch.equal(single["visual.ln_post.weight"], start["visual.ln_post.weight"])
    ranked, alone = (ckpt(tmp_path / r / "last.pt")[calibration.KEY] for r in ("full", "single"))
    assert ranked["real"] == pytest.approx(alone["real"], abs=1e-5)


def test_vit_l14_checkpoint_is_under_1_mb(tmp_path):
    with torch.device("meta"):
        visual = clip_vit.VisionTransformer(224, 14, 1024, 24, 16, 768)
    visual = visual.to_empty(device="cpu")  # real memory, no random init of 304M weights
    for p in visual.parameters():
        p.data.zero_()
    detector = clip_vit.DeepfakeDetector(visual)
    # 50 LayerNorms (102,400) + Linear(1024, 2)
    assert clip_vit.set_trainable(detector, "ln") == 102_400 + 2_050
    checkpoint.save_checkpoint(tmp_path / "best.pt", detector, {"clip": "ViT-L/14", "normalize": True})
    assert (tmp_path / "best.pt").stat().st_size < 1_000_000


@pytest.fixture(scope="module")
def finished(train_tree, fast_flags, tmp_path_factory) -> Path:
    """A finished one-epoch run (config.json, log.jsonl, last.pt, best.pt)."""
    out = tmp_path_factory.mktemp("runs")
    train.main(["--data", str(train_tree), "--out", str(out), *fast_flags, "--epochs", "1", "--name", "done"])
    return out / "done"


def test_checkpoints_carry_the_val_videos_scores_as_the_reference(finished, train_tree):
    """best.pt and last.pt written after validation hold the val videos' scores of their weights,
    in plain types (weights_only=True loads them): the reference evaluate.py reads a verdict against."""
    val = load_videos(train_tree, "ff++", "val")
    detector = clip_vit.load_detector(finished / "best.pt")
    video_p = {v.path: data.predict(detector, v.frames, torch.device("cpu")).mean() for v in val}
    for name in ("best.pt", "last.pt"):
        entry = ckpt(finished / name)[calibration.KEY]
        assert entry["format"] == calibration.FORMAT and entry["source"] == "FF++ val"
        for part, label in (("real", 0), ("fake", 1)):
            expected = sorted(video_p[v.path] for v in val if v.label == label)
            assert entry[part] == pytest.approx(expected, abs=1e-6)
    assert calibration.load_reference(finished / "best.pt") is not None


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def places(finished, train_tree, tmp_path_factory) -> dict[str, Path]:
    """What the bad inputs name: the finished run, copies of it broken four ways, a tree, no tree."""
    root = tmp_path_factory.mktemp("bad")
    runs = {name: shutil.copytree(finished, root / name) for name in ("json", "cut", "text", "device")}
    (runs["json"] / "config.json").write_text('{"clip": "tiny", "epochs": ')
    (runs["cut"] / "last.pt").write_bytes((finished / "last.pt").read_bytes()[:5000])
    (runs["text"] / "last.pt").write_text("hello\n")
    config = json.loads((finished / "config.json").read_text())
    (runs["device"] / "config.json").write_text(json.dumps({**config, "device": "gpu"}))
    return {"missing": root / "missing", "nothing": root / "nothing", "tree": train_tree,
            "out": finished.parent, "done": finished, **runs}


BAD = [  # (arguments, exit status, what the one line names)
    (["--device", "gpu"], 2, "--device"), (["--device", "cuda:x"], 2, "--device"),
    (["--batch-size", "0"], 2, "--batch-size"), (["--batch-size", "x"], 2, "--batch-size"),
    (["--workers", "-1"], 2, "--workers"), (["--frames", "0"], 2, "--frames"),
    (["--epochs", "0"], 2, "--epochs"),
    (["--log-every", "0"], 2, "--log-every"), (["--stop-after", "-1"], 2, "--stop-after"),
    (["--uniformity", "-0.5"], 2, "--uniformity"), (["--tuning", "lora"], 2, "--tuning"),
    (["--resume", "{missing}"], 2, "{missing}/config.json"),
    (["--resume", "{json}"], 2, "{json}/config.json"),
    (["--resume", "{cut}"], 1, "{cut}/last.pt"), (["--resume", "{text}"], 1, "{text}/last.pt"),
    (["--resume", "{device}"], 2, "--device"),
    # a run there already
    (["--data", "{tree}", "--out", "{out}", "--name", "done", "--batch-size", "8"], 1, "--resume"),
    (["--data", "{tree}", "--batch-size", "1000"], 1, "--batch-size"),  # more than the training frames
    (["--data", "{nothing}"], 1, "{nothing}/ff++/train"),
    (["--batch-size", "3", "WORLD_SIZE=4"], 2, "--batch-size"),  # a share of every batch for each process
]


@pytest.mark.parametrize("args, status, names", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag_or_file(args, status, names, places, tmp_path, capsys,
                                                       monkeypatch):
    args = [a.format(**places) for a in args]
    for a in [a for a in args if "=" in a]:
        monkeypatch.setenv(*a.split("="))
        args.remove(a)
    before = {p: files(p) for p in places.values() if p.is_dir() and p != places["tree"]}
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path), "--clip", "tiny", "--workers", "0", *args])
    code = e.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert (code if isinstance(code, int) else 1) == status and names.format(**places) in message, message
    assert "\n" not in message.strip() and "Traceback" not in message
    assert before == {p: files(p) for p in before}  # nothing written, nothing removed


def test_sigterm_writes_last_pt_and_the_resumed_run_is_bitwise_identical(train_tree, fast_flags, tmp_path):
    args = ["--data", str(train_tree), "--out", str(tmp_path), *fast_flags, "--epochs", "2", "--no-val"]
    # with loader workers, in a process group of its own: the signal reaches the workers too (as a
    # cluster's SIGTERM does); they ignore it and train.py stops cleanly. One thread: bitwise comparable.
    process = subprocess.Popen([sys.executable, "train.py", *args, "--name", "cut", "--workers", "2"],
                               cwd=ROOT,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    log_path, deadline = tmp_path / "cut" / "log.jsonl", time.time() + 120
    while (not (log_path.is_file() and log_path.read_text()) and process.poll() is None
           and time.time() < deadline):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    err = process.communicate(timeout=180)[1]
    step = ckpt(tmp_path / "cut" / "last.pt")["step"]
    assert process.returncode == 128 + signal.SIGTERM and 1 <= step < 10, (process.returncode, step,
                                                                          err[-2000:])
    assert "Traceback" not in err
    assert f"python train.py --resume {tmp_path / 'cut'}" in err.strip().splitlines()[-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(["--resume", str(tmp_path / "cut")])
        train.main([*args, "--name", "full"])
    finally:
        torch.set_num_threads(threads)
    assert same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")


@pytest.mark.parametrize("case", ["one_class", "no_val"])
def test_validation_that_cannot_rank_still_writes_best_pt_and_says_why(case, make_tree, fast_flags, tmp_path):
    tree = make_tree(tmp_path / case, splits=("train",) if case == "no_val" else ("train", "val"),
                     videos_per_source=2, frames=(0, 3), size=64)
    sources = ["--sources", "Deepfakes", "FaceSwap"] if case == "one_class" else []
    run(tree, tmp_path, *fast_flags, *sources, "--epochs", "1", "--name", case)
    epoch = json.loads((tmp_path / case / "log.jsonl").read_text().splitlines()[-1])
    assert epoch["epoch_done"] and "val AUROC undefined" in epoch["val"]
    assert same_weights(tmp_path / case / "best.pt", tmp_path / case / "last.pt")


def test_full_disk_is_one_line_naming_the_file_and_the_run_resumes(train_tree, fast_flags, tmp_path,
                                                                   monkeypatch):
    args = ["--data", str(train_tree), "--out", str(tmp_path), *fast_flags, "--epochs", "1", "--no-val",
            "--save-every", "2", "--name", "full"]
    run_dir, real_write, writes = tmp_path / "full", checkpoint.atomic_write, []

    def second_last_pt_fails(path, content):
        writes.append(Path(path).name)
        if writes.count("last.pt") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, content)

    monkeypatch.setattr(checkpoint, "atomic_write", second_last_pt_fails)
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert str(run_dir / "last.pt") in e.value.code and f"--resume {run_dir}" in e.value.code
    assert ckpt(run_dir / "last.pt")["step"] == 2  # the step-2 file, whole
    with open(run_dir / "log.jsonl", "a") as fh:  # a log line cut short by the full disk: dropped on resume
        fh.write('{"step": 5, "lo')
    monkeypatch.setattr(checkpoint, "atomic_write", real_write)
    train.main(["--resume", str(run_dir)])
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 5]  # 5 steps and the epoch line
    assert ckpt(run_dir / "last.pt")["step"] == 5 and (run_dir / "best.pt").is_file()
