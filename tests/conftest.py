"""Shared fixtures: tiny preprocessed trees, face videos (helpers in _video_utils.py), face models,
tiny checkpoints, OpenAI's own CLIP code and a loopback HTTP server."""

import csv
import http.server
import importlib.util
import sysconfig
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import cv2
import numpy as np
import pytest
import torch

import _video_utils as U
import clip_vit
import preprocess
from util.layouts import INDEX_FIELDS
from util import checkpoint


def make_tree(root: Path, dataset: str = "ff++", splits=("train", "val"),
              sources=("youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"),
              videos_per_source: int = 2, frames: Sequence = (0, 9, 18), size: int = 256,
              seed: int = 0, planted: bool = False) -> Path:
    """<root>/<dataset>/<split>/{index.csv, <source>/<video_id>/<frame>.png}: real crops bluish noise,
    fake ones reddish with a bright square at [size/4, size/2)². `planted`: fakes bluish too, the
    square anywhere in the top-left quadrant: only the square tells them apart."""
    g = torch.Generator().manual_seed(seed)
    for split in splits:
        split_dir = root / dataset / split
        rows = []
        for s, source in enumerate(sources):
            label = 0 if source == "youtube" else 1
            for v in range(videos_per_source):
                vid = f"{s}{v:02d}" if label == 0 else f"{s}{v:02d}_{v:03d}"
                folder = split_dir / source / vid
                folder.mkdir(parents=True, exist_ok=True)
                for f in frames:
                    img = torch.randint(0, 120, (3, size, size), generator=g, dtype=torch.uint8)
                    img[2 if label == 0 or planted else 0] += 100
                    if label:
                        side = size // 4
                        y0, x0 = torch.randint(0, size // 2 - side + 1, (2,), generator=g).tolist() \
                            if planted else (side, side)
                        img[:, y0:y0 + side, x0:x0 + side] = 250
                    cv2.imwrite(str(folder / f"{f}.png"), img.permute(1, 2, 0).numpy()[:, :, ::-1])
                rows.append(dict(video_id=vid, source=source, label=label, n_frames=len(frames),
                                 path=f"{source}/{vid}", file=f"videos/{source}/{vid}.mp4"))
        with open(split_dir / "index.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=INDEX_FIELDS)
            w.writeheader()
            w.writerows(rows)
    return root


def make_split(data: Path, dataset: str, videos: list, split: str = "test", seed: int = 0):
    """Write a preprocessed split: crops <source>/<id>/<frame>.png + index.csv."""
    rng = np.random.default_rng(seed)
    split_dir = data / dataset / split
    rows = []
    for source, label, vid, frames in videos:
        folder = split_dir / source / vid
        folder.mkdir(parents=True)
        for k in frames:
            base = rng.integers(0, 256, 3)  # one colour per frame, plus noise: varied p_fake
            img = np.clip(base + rng.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{k}.png"), img)
        (folder / "meta.json").write_text("{}")
        rows.append([vid, source, label, len(frames), f"{source}/{vid}", f"{source}/{vid}.mp4"])
    with open(split_dir / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(INDEX_FIELDS)
        w.writerows(rows)


@pytest.fixture(name="make_tree", scope="session")
def make_tree_fixture():
    return make_tree


@pytest.fixture(name="make_split", scope="session")
def make_split_fixture():
    return make_split


@pytest.fixture(scope="session")
def train_tree(tmp_path_factory) -> Path:
    """10 videos (2 per source) x 4 frames of 64 px: 40 training frames, 5 steps per epoch at batch 8."""
    return make_tree(tmp_path_factory.mktemp("data"), videos_per_source=2, frames=(0, 3, 6, 9), size=64)


@pytest.fixture(scope="session")
def fast_flags() -> tuple[str, ...]:
    """train.py flags for runs of seconds on the CPU, in fp32 whatever the CPU (tests compare with fp32)."""
    return ("--clip", "tiny", "--batch-size", "8", "--workers", "0", "--log-every", "1", "--lr", "3e-3",
            "--min-lr", "3e-4", "--precision", "fp32")


@pytest.fixture(scope="session")
def models() -> preprocess.FaceModels:
    return preprocess.load_face_models()


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> Path:
    """8 frames of the astronaut (640x480, shifted, scaled, rotated), mp4v."""
    return U.write_video(tmp_path_factory.mktemp("vid") / "face.mp4", U.face_frames(8))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny" / "best.pt"
    path.parent.mkdir(parents=True)
    detector = clip_vit.build_detector("tiny")
    with torch.no_grad():  # a head that makes p_fake depend on the image, far from 0.5
        detector.head.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    checkpoint.save_checkpoint(path, detector, {"clip": "tiny", "normalize": True})
    return path


@pytest.fixture(scope="session")
def openai_clip() -> SimpleNamespace:
    """OpenAI's own CLIP code from the openai-clip wheel: .model, .simple_tokenizer (by path: the
    package's __init__ needs pkg_resources) and .bpe, its vocabulary."""
    root = Path(sysconfig.get_paths()["purelib"]) / "clip"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return SimpleNamespace(model=load("model"), simple_tokenizer=load("simple_tokenizer"),
                           bpe=root / "bpe_simple_vocab_16e6.txt.gz")


class Server:
    """Serves `files` on 127.0.0.1; a file named in `truncate` is cut off after half its bytes."""

    def __init__(self, files: dict[str, bytes], truncate=()):
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                name = self.path.rsplit("/", 1)[-1]
                if name not in files:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Length", str(len(files[name])))
                self.end_headers()
                self.wfile.write(files[name][: len(files[name]) // 2] if name in truncate else files[name])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick to stop

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    """serve(files, truncate=()) -> a Server of `files`, stopped after the test."""
    servers = []
    yield lambda files, truncate=(): servers.append(Server(files, truncate)) or servers[-1]
    for server in servers:
        server.close()
