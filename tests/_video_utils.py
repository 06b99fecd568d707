"""Test helpers: videos of scikit-image's astronaut, dataset trees, child processes, CSV rows."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

import preprocess

FACE_CENTRE = (220.0, 121.0)  # centre of the astronaut's face in skimage's 512x512 image


def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # [512, 512, 3] RGB


def place_face(canvas_wh: tuple[int, int], centre: tuple[float, float], scale: float = 1.0,
               angle: float = 0.0, background: int = 128,
               frame: np.ndarray | None = None) -> np.ndarray:
    """The astronaut (her head only over `frame`), face centre at `centre`, scaled, turned (degrees)."""
    m = cv2.getRotationMatrix2D(FACE_CENTRE, angle, scale)
    m[:, 2] += np.array(centre) - np.array(FACE_CENTRE)
    if frame is None:
        return cv2.warpAffine(astronaut(), m, canvas_wh, borderValue=(background,) * 3)
    head = np.zeros((512, 512), np.uint8)  # only her head (no suit) over an existing frame
    head[20:230, 120:320] = 255
    out, keep = frame.copy(), cv2.warpAffine(head, m, canvas_wh) > 127
    out[keep] = cv2.warpAffine(astronaut(), m, canvas_wh)[keep]
    return out


def face_frames(n: int = 8, wh: tuple[int, int] = (640, 480), seed: int = 0) -> list[np.ndarray]:
    """n frames of one face (~150 px at 640x480), shifted, scaled and turned a little."""
    rng = np.random.RandomState(seed)
    k = wh[0] / 640
    frames = []
    for _ in range(n):
        centre = (wh[0] / 2 + k * rng.uniform(-60, 60), wh[1] * 0.4 + k * rng.uniform(-30, 30))
        frames.append(place_face(wh, centre, k * rng.uniform(1.5, 1.9), rng.uniform(-8, 8)))
    return frames


def write_video(path, frames: list[np.ndarray], fps: int = 25, fourcc: str = "mp4v") -> Path:
    """RGB frames -> video file (mp4v .mp4 or MJPG .avi)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def blank_video(path, n: int = 4, wh: tuple[int, int] = (96, 64)) -> Path:
    """A video without any face (smooth noise)."""
    rng = np.random.RandomState(1)
    return write_video(path, [cv2.GaussianBlur(rng.randint(0, 255, (wh[1], wh[0], 3), np.uint8), (9, 9), 3)
                              for _ in range(n)])


def truncated_avi(path, n: int = 40, keep: float = 0.5, wh: tuple[int, int] = (160, 120)) -> Path:
    """An MJPG .avi cut to `keep` of its data whose header still says n frames."""
    rng = np.random.RandomState(2)
    frames = [rng.randint(0, 255, (wh[1], wh[0], 3), np.uint8) for _ in range(n)]
    data = write_video(path, frames, fourcc="MJPG").read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])
    return Path(path)


def touch(path) -> Path:
    """An empty placeholder file (layout tests never open the videos)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def ffpp_tree(root: Path) -> None:
    """FF++ c23 placeholders: splits 000-001/002-003/004-005, 6 reals, 3 fakes per method, masks."""
    root.mkdir(parents=True, exist_ok=True)
    for s, pairs in {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}.items():
        (root / f"{s}.json").write_text(json.dumps(pairs))
    for i in range(6):
        touch(root / f"original_sequences/youtube/c23/videos/{i:03d}.mp4")
    for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
        for a, b in (("000", "001"), ("001", "000"), ("004", "005")):
            touch(root / f"manipulated_sequences/{m}/c23/videos/{a}_{b}.mp4")
            touch(root / f"manipulated_sequences/{m}/masks/videos/{a}_{b}.mp4")


def listing_tree(root: Path, dataset: str) -> str:
    """A dataset with a listing file and its videos; the listing's path under `root` (ff++: val.json)."""
    if dataset == "ff++":
        ffpp_tree(root)
        return "val.json"
    if dataset == "cdfv2":
        for f in ("Celeb-real/a.mp4", "Celeb-synthesis/b.mp4", "YouTube-real/c.mp4"):
            touch(root / f)
        (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/a.mp4\n0 Celeb-synthesis/b.mp4\n")
        return "List_of_testing_videos.txt"
    if dataset == "dfdc":
        for name in ("a.mp4", "b.mp4"):
            touch(root / "test" / name)
        return "test/labels.csv"
    touch(root / "original_videos" / "a.mp4")
    touch(root / "method_A" / "b.mp4")
    return "dataset.json"


def live_children(pid: int) -> list[int]:
    """Processes (not zombies) whose parent is pid."""
    kids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError):  # exited meanwhile
            state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                kids.append(int(entry))
    return kids


def alive(pid: int) -> bool:
    """Running: a zombie has exited, and its new parent may not reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_and_wait(process: subprocess.Popen, workers: list[int], seconds: float = 10) -> None:
    """SIGKILL `process`, then give its `workers` `seconds` to exit on their own."""
    process.kill()
    process.wait()
    deadline = time.time() + seconds
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.1)


def kill_all(process: subprocess.Popen, workers: list[int]) -> None:
    """Leave nothing running to the other tests, whatever a test's outcome."""
    process.kill()
    for w in workers:
        if alive(w):
            os.kill(w, signal.SIGKILL)


def keypoints_in_crop(crop: np.ndarray, models) -> np.ndarray:
    """The five keypoints found again inside a crop (largest face, upsample 1)."""
    rects = models.detector(crop, 1)
    assert len(rects), "no face found again in the crop"
    r = max(rects, key=lambda r: r.width() * r.height())
    return preprocess.landmarks5(crop, (r.left(), r.top(), r.right(), r.bottom()), models)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_csv(path: Path) -> list[dict]:
    """The rows of an index.csv or failures.csv."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


REPO = Path(__file__).resolve().parent.parent
NOT_SLURM = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
