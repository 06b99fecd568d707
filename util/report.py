"""What evaluate.py says and writes of one scored file (--video/--image/--input): its verdict
lines and predictions.csv rows, and with --report DIR its folder (one per input file):
timeline.png, faces.png, saliency.npz, annotated.mp4 (videos) and report.json, each written whole
or not at all, report.json last (its presence means the folder is complete).

    persons = [person_of(track, frame_p, maps) for track, frame_p, maps in ...]  # largest first
    rows = say_verdict(Path("clip.mp4"), len(frames), persons, threshold, reference)  # printed
    verdict = calibration.judge(persons[0].score, threshold, reference)
    notes = write_report(Path("report/clip"), Path("clip.mp4"), persons, verdict, len(frames), indices)

  timeline.png   p_fake of every scored frame, one line per person, and the threshold
  faces.png      every crop with its p_fake, above its saliency overlay (util.saliency)
  saliency.npz   every crop's map as an array [h, w] in [0, 1], keyed `person1/frame12`
  annotated.mp4  the input (its frame count, size and rate) with each person's box and p_fake,
                 coloured from real (green) over the threshold (yellow) to fake (red), held until
                 the next sampled frame, and the running video score (the mean so far)
  report.json    everything the verdict line says, and every person's and frame's score
"""
from __future__ import annotations

import bisect
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from util.calibration import CSV_FIELDS, Reference, Threshold, Verdict, judge
from util.files import write_json, write_output, writing
from util.plots import new_axes, png

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
TILE = 128        # px of a crop in faces.png
COLUMNS = 8       # crops per row of faces.png
SHOWN = 64        # crops of a person faces.png shows at most (evenly spaced): --frames all scores thousands
MARKERS = 64      # scored frames up to which timeline.png marks each one
# predictions.csv: a row per file, and per person when several appear
FIELDS = ["file", "person", "frames_seen", "frames_with_face", "p_fake", "note", *CSV_FIELDS]


@dataclass
class Person:
    """One tracked face of a file: its scored crops, in frame order."""
    frames: list[int]          # each crop's frame index in the file (0 for an image)
    boxes: list[Box]           # each crop's face box in the frame
    crops: list[np.ndarray]    # [S, S, 3] uint8 RGB, as scored
    p_fake: list[float]        # each crop's p_fake
    maps: list[np.ndarray] | None  # each crop's saliency map [h, w] in [0, 1] (util.saliency); None: not made

    @property
    def score(self) -> float:
        """The person's score: the mean p_fake of its crops (the paper's video score)."""
        return float(np.mean(self.p_fake))


def person_of(track: list, p_fake, maps=None) -> Person:
    """A Person from preprocess.py's crops of one face (objects with .frame, .box, .image: FaceCrop),
    their p_fake [n] and saliency maps [n, h, w] (or None), in the same order."""
    p_fake = [float(p) for p in p_fake]
    maps = None if maps is None else [np.asarray(m, dtype=np.float32) for m in maps]
    if not len(track) == len(p_fake) == len(track if maps is None else maps):
        raise ValueError(f"{len(track)} crops, {len(p_fake)} scores and {len(maps)} maps: one of each per crop")
    return Person([int(c.frame) for c in track], [tuple(map(float, c.box)) for c in track],
                  [c.image for c in track], p_fake, maps)


# ----------------------------------------------------------------------------- the verdict said

def row(path: Path, person: int | None = None, seen: int = 0, with_face: int = 0,
        verdict: Verdict | None = None, note: str = "") -> dict:
    """One line of predictions.csv (FIELDS): the verdict's threshold, rank and p-value at its end,
    empty without a score."""
    judged = dict.fromkeys(CSV_FIELDS, "") if verdict is None else verdict.csv_columns()
    return {"file": str(path), "person": person, "frames_seen": seen, "frames_with_face": with_face,
            "p_fake": None if verdict is None else verdict.p_fake, "note": note, **judged}


def say_verdict(path: Path, n_seen: int, persons: list[Person], threshold: Threshold,
                reference: Reference | None) -> list[dict]:
    """Prints the file's verdict (calibration.Verdict.line), and each person's when several appear;
    returns its predictions.csv rows (the file's, then one per person when several appear).

    The file's score is the main (largest) person's, the one preprocess.py keeps for the
    benchmarks: a stray one-frame detection (a poster, a logo) must not decide the verdict.
    Another person judged differently is said on the same line, never hidden."""
    verdicts = [judge(p.score, threshold, reference) for p in persons]
    main, with_face = verdicts[0], len({f for p in persons for f in p.frames})
    note = ""
    if len(persons) > 1:
        differ = [f"; person {k} {v.label}" for k, v in enumerate(verdicts[1:], 2) if v.label != main.label]
        note = f"{len(persons)} people, score of person 1, the largest" + "".join(differ)
    print(f"{path}: {main.line()}; {with_face}/{n_seen} frames with a face" + (f"; {note}" if note else ""))
    rows = [row(path, None, n_seen, with_face, main, note)]
    if len(persons) > 1:
        for k, (v, p) in enumerate(zip(verdicts, persons), 1):
            print(f"    person {k}: p_fake {v.p_fake:.4f} -> {v.label} ({len(p.frames)} "
                  f"frame{'s' if len(p.frames) > 1 else ''})")
            rows.append(row(path, k, n_seen, len(p.frames), v))
    return rows


def check_folder(folder: Path) -> None:
    """A report folder that cannot be written (no permission, a file in the way) as one OSError
    naming it, before minutes of scoring rather than after."""
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()


def colour(p_fake: float, threshold: float) -> tuple[int, int, int]:
    """BGR from green (p_fake 0) over yellow (the threshold) to red (1)."""
    green, yellow, red = np.array([0, 200, 0]), np.array([0, 220, 255]), np.array([0, 0, 255])
    if p_fake <= threshold:
        mix = green + (yellow - green) * (p_fake / threshold if threshold > 0 else 1.0)
    else:
        mix = yellow + (red - yellow) * ((p_fake - threshold) / (1 - threshold))
    return tuple(int(round(c)) for c in mix)


# ----------------------------------------------------------------------------- the outputs, in memory

def timeline_png(persons: list[Person], threshold: Threshold, title: str) -> bytes:
    """p_fake per scored frame for each person, with the threshold line."""
    fig, ax = new_axes(title, "frame", "p_fake")
    for k, person in enumerate(persons, 1):
        ax.plot(person.frames, person.p_fake, marker="o" if len(person.frames) <= MARKERS else None,
                markersize=4, linewidth=1.5, label=f"person {k}: mean {person.score:.4f}")
    ax.axhline(threshold.value, color="0.3", linestyle="--", linewidth=1,
               label=f"threshold {threshold.value:.4f} ({threshold.how})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=7)
    return png(fig)


def overlay(crop: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The crop (RGB uint8) under its map as a heat map (pytorch-grad-cam's show_cam_on_image):
    RGB uint8 of the crop's size."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    h, w = crop.shape[:2]
    mask = cv2.resize(saliency, (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1)
    return show_cam_on_image(crop.astype(np.float32) / 255, mask, use_rgb=True)


def shown(person: Person) -> list[int]:
    """The crops faces.png shows of a person: all, or SHOWN evenly spaced ones."""
    n = len(person.crops)
    return list(range(n)) if n <= SHOWN else np.linspace(0, n - 1, SHOWN).round().astype(int).tolist()


def faces_png(persons: list[Person], threshold: Threshold) -> bytes:
    """Every crop of every person (a band of rows each, under a header; at most SHOWN, evenly
    spaced), captioned with its frame and p_fake, above its saliency overlay."""
    from matplotlib.figure import Figure  # imported here: half a second of every command's start-up
    header, caption = 28, 24  # px
    picks = [shown(p) for p in persons]
    rows = [-(-len(i) // COLUMNS) for i in picks]
    columns = min(COLUMNS, max(len(i) for i in picks))
    cell_h = caption + 2 * TILE  # the caption, the crop, its overlay
    width, height = columns * TILE, sum(rows) * cell_h + header * len(persons)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    top = 0  # px from the figure's top
    for k, (person, pick, n_rows) in enumerate(zip(persons, picks, rows), 1):
        n = len(person.crops)
        fig.text(0.5, 1 - (top + header / 2) / height, f"person {k}: p_fake {person.score:.4f} -> "
                 f"{judge(person.score, threshold, None).label} ({n} crops{'' if len(pick) == n else f', {len(pick)} shown'}"
                 f"; below each, where p_fake is raised)", ha="center", va="center", fontsize=8)
        top += header
        ax = fig.add_axes((0, 1 - (top + n_rows * cell_h) / height, columns * TILE / width, n_rows * cell_h / height))
        ax.set_axis_off()
        mosaic = np.full((n_rows * cell_h, columns * TILE, 3), 255, np.uint8)
        for i, j in enumerate(pick):
            crop, saliency, p, frame = person.crops[j], person.maps[j], person.p_fake[j], person.frames[j]
            y, x = (i // COLUMNS) * cell_h + caption, (i % COLUMNS) * TILE
            small = cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA)
            mosaic[y:y + TILE, x:x + TILE] = small
            mosaic[y + TILE:y + 2 * TILE, x:x + TILE] = overlay(small, saliency)
            ax.text(x + TILE / 2, y - 4, f"frame {frame}: {p:.3f}", ha="center", va="bottom", fontsize=7,
                    color="red" if p > threshold.value else "green")
        ax.imshow(mosaic, interpolation="nearest")
        top += n_rows * cell_h
    return png(fig)


def saliency_npz(persons: list[Person]) -> bytes:
    """Every crop's map, float32 [h, w], keyed `person<k>/frame<index>` (np.load(...)[key])."""
    arrays = {f"person{k}/frame{f}": m for k, p in enumerate(persons, 1) for f, m in zip(p.frames, p.maps)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def report_dict(source: Path, persons: list[Person], verdict: Verdict, frames_seen: int, video: bool,
                files: dict, notes: list[str]) -> dict:
    """report.json: the file's verdict (Verdict.as_dict, its person 1), each person's and frame's score."""
    people = []
    for k, p in enumerate(persons, 1):
        v = judge(p.score, verdict.threshold, verdict.reference)
        people.append({"person": k, "p_fake": v.p_fake, "label": v.label, "real_below": v.real_below,
                       "p_value": v.p_value, "frames": [{"frame": f, "p_fake": s, "box": list(b)}
                                                        for f, s, b in zip(p.frames, p.p_fake, p.boxes)]})
    with_face = len({f for p in persons for f in p.frames})
    return {"file": str(source), "kind": "video" if video else "image", "frames_seen": frames_seen,
            "frames_with_face": with_face, "verdict": verdict.as_dict(), "persons": people,
            "files": files, "notes": notes}


# ----------------------------------------------------------------------------- the annotated video

def annotate(frame: np.ndarray, index: int, persons: list[Person], shown: list[int | None],
             threshold: float) -> None:
    """Draws on one BGR frame, in place: each person's box and p_fake at its crop `shown[k]`
    (None: not in this stretch of frames), and person 1's running score over its crops so far."""
    for k, (person, j) in enumerate(zip(persons, shown), 1):
        if j is None:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in person.boxes[j])
        c = colour(person.p_fake[j], threshold)
        cv2.rectangle(frame, (x0, y0), (x1, y1), c, 2)
        cv2.putText(frame, f"person {k}: {person.p_fake[j]:.2f}", (x0, max(12, y0 - 6)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv2.LINE_AA)
    seen = bisect.bisect_right(persons[0].frames, index)
    text, c = "video p_fake: -", (255, 255, 255)
    if seen:
        running = float(np.mean(persons[0].p_fake[:seen]))
        text = f"video p_fake {running:.4f} -> {'FAKE' if running > threshold else 'real'} ({seen} scored)"
        c = colour(running, threshold)
    cv2.rectangle(frame, (0, 0), (min(frame.shape[1], 330), 22), (0, 0, 0), -1)
    cv2.putText(frame, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv2.LINE_AA)


def write_annotated_video(source: Path, path: Path, persons: list[Person], sampled: list[int],
                          threshold: float) -> None:
    """annotated.mp4 (mp4v): every frame of `source` as it decodes, at its size and rate, with
    annotate()'s drawing; a crop's box is held from its frame until the next of the `sampled`
    frame indices (those read for scoring). Written to a temporary file in the folder, renamed
    over `path` when complete. ValueError (one line) when the video cannot be re-read (cannot be
    opened, or now decodes fewer frames than the scoring read); OSError when it cannot be written."""
    cap = cv2.VideoCapture(str(source))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise ValueError(f"cannot re-read {source} to write {path.name}: OpenCV cannot open or decode it now")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0  # a container without a rate
    sampled = sorted(sampled)
    at = [{f: j for j, f in enumerate(p.frames)} for p in persons]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    index, writer = 0, None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot open an mp4v writer for {tmp.name}")
            while ok:
                last = sampled[bisect.bisect_right(sampled, index) - 1] if sampled and index >= sampled[0] else None
                annotate(frame, index, persons, [a.get(last) for a in at], threshold)
                writer.write(frame)
                index += 1
                ok, frame = cap.read()
            writer.release()
            if sampled and index <= sampled[-1]:
                raise ValueError(f"cannot re-read {source} to write {path.name}: it decodes {index} frames now, "
                                 f"but frame {sampled[-1]} was scored")
            os.replace(tmp, path)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the folder

def write_report(folder: Path, source: Path, persons: list[Person], verdict: Verdict, frames_seen: int,
                 sampled: list[int], video: bool = True) -> list[str]:
    """Writes the report of one file into `folder` (created): saliency.npz, timeline.png, faces.png,
    annotated.mp4 when `video`, report.json last. `persons`: largest first, at least one;
    `verdict`: the file's (calibration.judge of persons[0].score); `frames_seen`: frames read;
    `sampled`: their indices. Returns notes, one line each, for the caller to print: a video
    that cannot be re-read loses only annotated.mp4 (an old one is removed), said in a note and in
    report.json. A failed write is one OSError naming the file; what was written is whole."""
    if not persons or any(p.maps is None for p in persons):
        raise ValueError("a report needs at least one person, with a saliency map of every crop")
    t = verdict.threshold
    name = f"{source.name}: {verdict.label}, p_fake {verdict.p_fake:.4f}"
    files, notes = {}, []
    for key, file, content in (("saliency", "saliency.npz", lambda: saliency_npz(persons)),
                               ("timeline", "timeline.png", lambda: timeline_png(persons, t, name)),
                               ("faces", "faces.png", lambda: faces_png(persons, t))):
        write_output(folder / file, content())
        files[key] = file
    if video:
        annotated = folder / "annotated.mp4"
        try:
            write_annotated_video(source, annotated, persons, sampled, t.value)
            files["annotated"] = annotated.name
        except ValueError as e:
            annotated.unlink(missing_ok=True)  # not a stale one from a past run
            files["annotated"] = None
            notes.append(f"{e}; the rest of the report is written")
    write_json(folder / "report.json", report_dict(source, persons, verdict, frames_seen, video, files, notes))
    return notes
