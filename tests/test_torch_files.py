"""util/torch_files.py, through every reader built on it: every file read is checked. An empty,
truncated, corrupt or foreign file is one ValueError that names the file, says what is wrong and
what to do (never OSError 22 or a traceback from deep inside torch); a missing one is
FileNotFoundError."""
import json
import random
import re
from pathlib import Path

import pytest
import torch

import clip_vit as cv
from util import checkpoint, clip_weights


def our_checkpoint(path: Path) -> Path:
    detector = cv.build_detector("tiny")
    cv.set_trainable(detector, "ln")
    checkpoint.save_checkpoint(path, detector, {"clip": "tiny", "normalize": True}, step=3)
    return path


def openai_state_dict(path: Path) -> Path:
    torch.save(cv.tiny_clip(seed=2).state_dict(), path)
    return path


# The authors' model.ckpt gets the same checks in test_clip_vit.py, next to the writer of that format.
READERS = {  # name: (writes a valid file, reads it, the advice every error about it gives)
    "load_checkpoint": (our_checkpoint, checkpoint.load_checkpoint, "re-running training"),
    "load_detector": (our_checkpoint, cv.load_detector, "pass best.pt or last.pt written by train.py"),
    "load": (openai_state_dict, cv.load, "pass OpenAI's CLIP weights"),
    "read_state_dict": (openai_state_dict, clip_weights.read_state_dict, "pass OpenAI's CLIP weights"),
}
NOT_IT = {  # what each reader says of a torch file holding a list
    "load_checkpoint": "is not a checkpoint of this project (format 'clip-deepfake/1'): it holds a list",
    "load_detector": "is neither a checkpoint of this project nor the authors' model.ckpt: expected keys",
    "load": "holds a list, not a state dict of tensors",
    "read_state_dict": "holds a list, not a state dict of tensors",
}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif how == "json":
        path.write_text(json.dumps({"format": "clip-deepfake/1", "state_dict": {}}))
    elif how == "list":
        torch.save([1, 2, 3], path)


DAMAGE = {
    "half": r"is truncated or corrupt \(not a complete zip/torch file: [\d,]+ bytes and no zip index at the end",
    "empty": r"is an empty file \(0 bytes\)",
    "random": r"not a torch file at all \(it starts with b'",
    "json": r"not a torch file at all \(it starts with b'\{\"format', a text file\)",
    "list": None,  # NOT_IT
}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_file_is_one_clear_value_error(tmp_path, reader, how):
    write, read, fix = READERS[reader]
    path = write(tmp_path / "file.pt")
    read(path)  # intact, it loads
    damage(path, how)
    with pytest.raises(Exception) as e:
        read(path)
    message = str(e.value)
    assert type(e.value) is ValueError, f"{type(e.value).__name__}: {message}"
    assert message.startswith(str(path)) and "\n" not in message and "Errno" not in message
    assert re.search(DAMAGE[how] or re.escape(NOT_IT[reader]), message), message
    assert fix in message


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_file_or_a_folder(tmp_path, reader):
    _, read, fix = READERS[reader]
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'none.pt'}: no such file; .*{fix}"):
        read(tmp_path / "none.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(ValueError, match=f"^{tmp_path / 'folder.pt'}"):
        read(tmp_path / "folder.pt")


def test_truncated_last_pt_names_the_fix(tmp_path):
    """What train.py --resume and evaluate.py see for a last.pt cut short (a full disk, a killed copy)."""
    path = our_checkpoint(tmp_path / "last.pt")
    damage(path, "half")
    with pytest.raises(ValueError, match=rf"^{path} is truncated or corrupt .*; write it again by re-running "
                                         r"training \(train.py\), or pass another checkpoint"):
        checkpoint.load_checkpoint(path)


def test_the_wrong_kind_of_right_file(tmp_path):
    ours, weights = our_checkpoint(tmp_path / "best.pt"), openai_state_dict(tmp_path / "clip.pt")
    with pytest.raises(ValueError, match="is a checkpoint of this project .* not CLIP weights"):
        cv.load(str(ours))
    with pytest.raises(ValueError, match="not a checkpoint of this project .* holds a dict with keys 'positional"):
        checkpoint.load_checkpoint(weights)
    torch.save({"linear.weight": torch.zeros(2, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is a state dict of another model: missing visual.conv1.weight; pass OpenAI"):
        cv.load(str(tmp_path / "other.pt"))
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(tmp_path / "script.pt"))  # a TorchScript archive, not CLIP
    with pytest.raises(ValueError, match="is a state dict of another model: missing visual.conv1.weight"):
        cv.load(str(tmp_path / "script.pt"))
    with pytest.raises(ValueError, match="is not a checkpoint of this project: a TorchScript archive"):
        checkpoint.load_checkpoint(tmp_path / "script.pt")
    with pytest.raises(ValueError, match="nor the authors' model.ckpt: a TorchScript archive"):
        cv.load_detector(tmp_path / "script.pt")
    damage(tmp_path / "script.pt", "half")
    with pytest.raises(ValueError, match="script.pt is truncated or corrupt"):
        cv.load(str(tmp_path / "script.pt"))
