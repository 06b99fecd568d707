"""What evaluate.py says and writes of one scored file: its verdict lines, predictions.csv rows and,
with --report DIR, its folder: timeline.png, faces.png (crops over their saliency), saliency.npz
(keyed `person1/frame12`), annotated.mp4 (videos) and report.json, each written whole, report.json
last (its presence means the folder is complete).

The saliency maps are made in the forward pass that scores the crops: HiResCAM (Draelos & Carin 2020,
the element-wise Grad-CAM; pytorch-grad-cam's) on the patch tokens entering the last block, for the
fake log-odds (logit(p_fake): it does not vanish near 0 or 1), in the run's precision. (Grad-CAM
proper fails the planted-square test on this tower.) Below the last block no graph is recorded: the
maps add a backward through one block."""
from __future__ import annotations

import bisect
import io
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import HiResCAM
from torch import nn

from util.calibration import CSV_FIELDS, Reference, Threshold, Verdict, judge
from util.files import write_json, write_output, writing
from util.plots import legend_below, new_axes, png
from util.precision import autocast

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
TILE, COLUMNS = 128, 8   # px of a crop in faces.png, crops per row
SHOWN = 64               # crops of a person faces.png shows at most (--frames all scores thousands)
MARKERS = 64             # scored frames up to which timeline.png marks each one
RED, GREEN = (0, 0, 255), (0, 170, 0)  # BGR: fake and real sides of the threshold
FIELDS = ["file", "person", "frames_seen", "frames_with_face", "p_fake", "note", *CSV_FIELDS]


# ----------------------------------------------------------------------------- saliency

def fake_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """The CAM target of one crop's logits [2] (class 1 = fake)."""
    return logits[1] - logits[0]


def scores_and_maps(detector: nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32",
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(p_fake float64 [N], HiResCAM maps float32 [N, H, W] in [0, 1], all 0 where nothing raises
    p_fake) of CLIP-transformed crops [N, 3, H, W], in `precision` (util.precision): the scores
    data.predict gives, from the same forward. `detector`: clip_vit.DeepfakeDetector (class 1 = fake),
    left as it was (training mode, requires_grad, no .grad)."""
    block = detector.visual.transformer.resblocks[-1]
    grid = math.isqrt(detector.visual.positional_embedding.shape[0] - 1)  # 16 for 224 px, 14-px patches
    trainable, training = [p.requires_grad for p in detector.parameters()], detector.training
    detector.requires_grad_(False)  # and the last block's input a fresh leaf: the graph starts there
    leaf = block.register_forward_pre_hook(lambda _, args: (args[0].detach().requires_grad_(), *args[1:]))
    # ln_1's output [B, 1 + grid^2, W] -> the patch tokens as a feature map [B, W, grid, grid]
    cam = HiResCAM(detector, [block.ln_1],
                   reshape_transform=lambda x: x[:, 1:].float().unflatten(1, (grid, grid)).movedim(3, 1))
    p_fake, maps = [], []
    try:
        with torch.inference_mode(False), torch.enable_grad():  # whatever the caller's mode
            for batch in images.split(batch_size):
                with autocast(device, precision):
                    maps.append(cam(batch, [fake_log_odds] * len(batch)))  # [B, H, W]
                p_fake.append(cam.outputs.detach().float().softmax(-1)[:, 1].cpu())
    finally:
        cam.activations_and_grads.release()
        leaf.remove()
        for p, flag in zip(detector.parameters(), trainable):
            p.requires_grad_(flag)
        detector.train(training)
    return torch.cat(p_fake).double().numpy(), np.concatenate(maps).astype(np.float32)


# ----------------------------------------------------------------------------- the report

@dataclass
class Person:
    """One tracked face of a file: its scored crops, in frame order."""
    frames: list[int]          # each crop's frame index in the file (0 for an image)
    boxes: list[Box]           # each crop's face box in the frame
    crops: list[np.ndarray]    # [S, S, 3] uint8 RGB, as scored
    p_fake: list[float]        # each crop's p_fake
    maps: list[np.ndarray] | None  # each crop's saliency map [h, w] in [0, 1]; None without --report

    @property
    def score(self) -> float:
        """The mean p_fake of its crops (the paper's video score)."""
        return float(np.mean(self.p_fake))


def person_of(track: list, p_fake, maps=None) -> Person:
    """A Person from preprocess.py's crops of one face (.frame, .box, .image), p_fake and maps."""
    return Person([int(c.frame) for c in track], [tuple(map(float, c.box)) for c in track],
                  [c.image for c in track], [float(p) for p in p_fake],
                  None if maps is None else [np.asarray(m, dtype=np.float32) for m in maps])


def row(path: Path, person: int | None = None, seen: int = 0, with_face: int = 0,
        verdict: Verdict | None = None, note: str = "") -> dict:
    """One line of predictions.csv: empty verdict columns without a score."""
    judged = dict.fromkeys(CSV_FIELDS, "") if verdict is None else verdict.csv_columns()
    return {"file": str(path), "person": person, "frames_seen": seen, "frames_with_face": with_face,
            "p_fake": None if verdict is None else verdict.p_fake, "note": note, **judged}


def say_verdict(path: Path, n_seen: int, persons: list[Person], threshold: Threshold,
                reference: Reference | None) -> list[dict]:
    """Prints the file's verdict and, of several people, each one's; returns the predictions.csv rows.
    The file's score is the largest person's (as in the benchmarks); one judged differently is named."""
    verdicts = [judge(p.score, threshold, reference) for p in persons]
    main, with_face = verdicts[0], len({f for p in persons for f in p.frames})
    note = ""
    if len(persons) > 1:
        differ = [f"; person {k} {v.label}" for k, v in enumerate(verdicts[1:], 2) if v.label != main.label]
        note = f"{len(persons)} people, score of person 1, the largest" + "".join(differ)
    print(f"{path}: {main.line()}; {with_face}/{n_seen} frames with a face" + (f"; {note}" if note else ""))
    rows = [row(path, None, n_seen, with_face, main, note)]
    for k, (v, p) in enumerate(zip(verdicts, persons) if len(persons) > 1 else [], 1):
        print(f"    person {k}: p_fake {v.p_fake:.4f} -> {v.label} ({plural(len(p.frames), 'frame')})")
        rows.append(row(path, k, n_seen, len(p.frames), v))
    return rows


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_folder(folder: Path) -> None:
    """A report folder that cannot be written as one OSError naming it, before minutes of scoring."""
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()


def timeline_figure(persons: list[Person], threshold: Threshold, title: str, video: bool) -> Figure:
    """p_fake per scored frame for each person, with the threshold; of an image, per person."""
    fig, ax = new_axes(title, "frame" if video else "person", "p_fake")
    for k, person in enumerate(persons, 1):
        xs = person.frames if video else [k]
        ax.plot(xs, person.p_fake, marker="o" if len(xs) <= MARKERS else None, markersize=5, linewidth=1.5,
                label=f"person {k}: mean {person.score:.4f}")
    ax.axhline(threshold.value, color="0.3", linestyle="--", linewidth=1,
               label=f"threshold {threshold.value:.4f} ({threshold.how})")
    xs = [f for p in persons for f in p.frames] if video else [1, len(persons)]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)  # a lone point sits among whole frame numbers
    ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    ax.set_ylim(-0.02, 1.02)
    legend_below(fig)
    return fig


def overlay(crop: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The crop (RGB uint8) half under its map as a jet heat map (red: most), RGB uint8."""
    mask = cv2.resize(saliency, crop.shape[1::-1], interpolation=cv2.INTER_LINEAR).clip(0, 1)
    heat = cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET)[:, :, ::-1]
    return ((heat.astype(np.uint16) + crop) // 2).astype(np.uint8)


def shown(person: Person) -> list[int]:
    """The crops faces.png shows of a person: all, or SHOWN evenly spaced ones."""
    n = len(person.crops)
    return list(range(n)) if n <= SHOWN else np.linspace(0, n - 1, SHOWN).round().astype(int).tolist()


def faces_figure(persons: list[Person], threshold: Threshold) -> Figure:
    """Under a key, every person's crops (at most SHOWN) with frame and p_fake, each above its
    saliency overlay; a caption is red when the p_fake it shows is above the threshold it shows."""
    key, header, caption, cell = 36, 28, 24, 24 + 2 * TILE  # px
    picks = [shown(p) for p in persons]
    columns = max(4, min(COLUMNS, max(len(i) for i in picks)))  # 4 at least: the key fits
    height = key + sum(header + -(-len(i) // COLUMNS) * cell for i in picks)
    mosaic = np.full((height, columns * TILE, 3), 255, np.uint8)
    fig = Figure(figsize=(columns * TILE / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    t = round(threshold.value, 4)
    ax.text(6, key / 2, f"frame: p_fake, red above the threshold {t:.4f}, green at or below\n"
            "under each crop: where p_fake is raised (red most, blue least)", va="center", fontsize=7)
    top = key
    for k, (person, pick) in enumerate(zip(persons, picks), 1):
        n, label = len(person.crops), judge(person.score, threshold, None).label
        more = "" if len(pick) == n else f", {len(pick)} shown"
        ax.text(columns * TILE / 2, top + header / 2, f"person {k}: p_fake {person.score:.4f} -> {label} "
                f"({plural(n, 'crop')}{more})", ha="center", va="center", fontsize=8)
        top += header
        for i, j in enumerate(pick):
            y, x = top + (i // COLUMNS) * cell + caption, (i % COLUMNS) * TILE
            small = cv2.resize(person.crops[j], (TILE, TILE), interpolation=cv2.INTER_AREA)
            mosaic[y:y + TILE, x:x + TILE] = small
            mosaic[y + TILE:y + 2 * TILE, x:x + TILE] = overlay(small, person.maps[j])
            p = round(person.p_fake[j], 4)
            ax.text(x + TILE / 2, y - 4, f"frame {person.frames[j]}: {p:.4f}", ha="center", va="bottom",
                    fontsize=7, color="red" if p > t else "green")
        top += -(-len(pick) // COLUMNS) * cell
    ax.imshow(mosaic, interpolation="nearest")
    return fig


def saliency_npz(persons: list[Person]) -> bytes:
    """Every crop's map, float32 [h, w], keyed `person<k>/frame<index>` (np.load(...)[key])."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{f"person{k}/frame{f}": m for k, p in enumerate(persons, 1)
                                   for f, m in zip(p.frames, p.maps)})
    return buffer.getvalue()


def annotate(frame: np.ndarray, index: int, persons: list[Person], held: list[int | None],
             threshold: float) -> None:
    """Draws on one BGR frame, in place: each person's box of its crop `held[k]` (None: none in this
    stretch) with its running score (the mean p_fake of its crops so far), red above the threshold,
    green at or below; person 1's running score in a band at the top."""
    for k, (person, j) in enumerate(zip(persons, held), 1):
        if j is not None:
            running = float(np.mean(person.p_fake[:j + 1]))
            c = RED if running > threshold else GREEN
            x0, y0, x1, y1 = (round(v) for v in person.boxes[j])
            cv2.rectangle(frame, (x0, y0), (x1, y1), c, 2)
            cv2.putText(frame, f"person {k}: {running:.4f}", (x0, max(38, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, c, 1, cv2.LINE_AA)
    seen = bisect.bisect_right(persons[0].frames, index)
    text, c = "video p_fake: -", (255, 255, 255)
    if seen:
        running = float(np.mean(persons[0].p_fake[:seen]))
        c = RED if running > threshold else GREEN
        text = f"video p_fake {running:.4f} -> {'FAKE' if running > threshold else 'real'} ({seen} scored)"
    cv2.rectangle(frame, (0, 0), (min(frame.shape[1], 330), 22), (0, 0, 0), -1)
    cv2.putText(frame, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv2.LINE_AA)


def write_annotated_video(source: Path, path: Path, persons: list[Person], sampled: list[int],
                          threshold: float) -> None:
    """annotated.mp4 (mp4v): every frame of `source` at its size and rate, annotated; a crop's box is
    held until the next `sampled` frame. Written to a temporary file, renamed over `path` when
    complete. ValueError when the video cannot be re-read as scored; OSError when not written."""
    cap = cv2.VideoCapture(str(source))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise ValueError(f"cannot re-read {source} to write {path.name}: OpenCV cannot open or decode it now")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0  # a container without a rate
    sampled, at = sorted(sampled), [{f: j for j, f in enumerate(p.frames)} for p in persons]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    writer, index = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1]), 0
    try:
        with writing(path):
            while ok:
                last = sampled[bisect.bisect_right(sampled, index) - 1] if index >= sampled[0] else None
                annotate(frame, index, persons, [a.get(last) for a in at], threshold)
                writer.write(frame)
                index += 1
                ok, frame = cap.read()
            writer.release()
            if index <= sampled[-1]:
                raise ValueError(f"cannot re-read {source} to write {path.name}: it decodes {index} "
                                 f"frames now, but frame {sampled[-1]} was scored")
            os.replace(tmp, path)
    finally:
        cap.release()
        writer.release()
        tmp.unlink(missing_ok=True)


def write_report(folder: Path, source: Path, persons: list[Person], verdict: Verdict, frames_seen: int,
                 sampled: list[int], video: bool = True) -> list[str]:
    """Writes the report of one file into `folder` (made), report.json last. `persons`: largest first,
    each with its maps; `verdict`: the file's (of persons[0].score); `sampled`: the frames read.
    Returns notes for the caller to print: a video that cannot be re-read loses only annotated.mp4
    (an old one removed). A failed write is one OSError naming the file."""
    t = verdict.threshold
    title = f"{source.name}: {verdict.label}, p_fake {verdict.p_fake:.4f}"
    write_output(folder / "saliency.npz", saliency_npz(persons))
    write_output(folder / "timeline.png", png(timeline_figure(persons, t, title, video)))
    write_output(folder / "faces.png", png(faces_figure(persons, t)))
    files, notes = {"saliency": "saliency.npz", "timeline": "timeline.png", "faces": "faces.png"}, []
    if video:
        annotated = folder / "annotated.mp4"
        try:
            write_annotated_video(source, annotated, persons, sampled, t.value)
            files["annotated"] = annotated.name
        except ValueError as e:
            annotated.unlink(missing_ok=True)  # not a stale one from a past run
            files["annotated"] = None
            notes.append(f"{e}; the rest of the report is written")
    people = [{"person": k, "p_fake": v.p_fake, "label": v.label, "real_below": v.real_below,
               "p_value": v.p_value, "frames": [{"frame": f, "p_fake": s, "box": list(b)}
                                                for f, s, b in zip(p.frames, p.p_fake, p.boxes)]}
              for k, (p, v) in enumerate(((p, judge(p.score, t, verdict.reference)) for p in persons), 1)]
    write_json(folder / "report.json", {
        "file": str(source), "kind": "video" if video else "image", "frames_seen": frames_seen,
        "frames_with_face": len({f for p in persons for f in p.frames}), "verdict": verdict.as_dict(),
        "persons": people, "files": files, "notes": notes})
    return notes
