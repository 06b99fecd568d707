"""Command-line pieces the scripts share: number and device flags, a parser generated from a
config dataclass (every value checked before any work), and a progress bar over a list."""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from typing import Callable

import torch
from tqdm import tqdm


def at_least(kind: type, minimum: float, above: bool = False) -> Callable[[str], float]:
    """argparse type: a `kind` number >= minimum (> minimum when `above`)."""
    def check(value):
        number = kind(value)  # ValueError -> argparse's "invalid int value"
        if number < minimum or above and number == minimum:
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum}, got {value}")
        return number
    check.__name__ = kind.__name__
    return check


def count_or_all(value: str) -> int | None:
    """argparse type of --frames: a number >= 1, or `all` (None: every frame)."""
    if value == "all":
        return None
    try:
        return at_least(int, 1)(value)
    except ValueError:  # not a whole number; at_least's own refusal (below 1) passes through
        raise argparse.ArgumentTypeError(f"expected a number (at least 1) or 'all', got {value!r}") from None


class Watched(list):
    """A list whose every pass of iteration advances a tqdm bar: progress through a function that
    walks its argument once (preprocess.face_tracks over the frames), yet indexes it too."""

    def __init__(self, items, desc: str, unit: str = "frame"):
        super().__init__(items)
        self.desc, self.unit = desc, unit

    def __iter__(self):
        return iter(tqdm(super().__iter__(), total=len(self), desc=self.desc, unit=self.unit, leave=False,
                         disable=None))


def device_flag(value: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N of a GPU that is there."""
    if value in ("auto", "cpu"):
        return value
    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: no CUDA GPU on this machine; use --device cpu (or auto)")
    n = torch.cuda.device_count()
    if (device.index or 0) >= n:
        raise argparse.ArgumentTypeError(f"{value}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    return value


def resolve_device(flag: str, local_rank: int | None = None) -> torch.device:
    """--device's value as a device: auto = cuda when there is a GPU, else cpu. Under torchrun
    (`local_rank` given) a CUDA device is GPU LOCAL_RANK, whatever index the flag named."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(flag)
    if device.type == "cuda":
        index = local_rank if local_rank is not None else (device.index or 0)
        return torch.device("cuda", index)
    return device


def config_checks(config: type, types: dict[str, Callable[[str], object]] | None = None) -> dict[str, Callable]:
    """The checked flags of the dataclass `config`: `types[name]`, else at_least(min) for a field with
    metadata `min` (of its default's type)."""
    checks, defaults = dict(types or {}), config()
    for f in fields(config):
        if "min" in f.metadata and f.name not in checks:
            checks[f.name] = at_least(type(getattr(defaults, f.name)), f.metadata["min"])
    return checks


def config_parser(config: type, description: str | None = None,
                  types: dict[str, Callable[[str], object]] | None = None) -> argparse.ArgumentParser:
    """A flag per field of the dataclass `config`: --field-name VALUE (checked: config_checks, else
    the default's type), --x/--no-x for a boolean, nargs='+' for a list; metadata `help` and
    `choices`. The defaults are suppressed: parse_args returns only the flags on the command line."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, checks = config(), config_checks(config, types)
    for f in fields(config):
        default = getattr(defaults, f.name)
        kwargs = dict(default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {default})")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs.update(nargs="+", type=str)
        else:
            kwargs["type"] = checks.get(f.name, type(default))
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


def parse_config(parser: argparse.ArgumentParser, config: type, argv: list[str] | None = None,
                 types: dict[str, Callable[[str], object]] | None = None,
                 base: Callable[[dict], tuple[dict, str] | None] | None = None):
    """The dataclass `config` from the command line: its defaults, updated by `base(flags given)`
    when that gives (saved values, where they come from), then by the flags given. A saved value
    passes its flag's check unless the flag overrides it; a bad one is a usage error (exit 2) that
    names the flag to pass."""
    given = vars(parser.parse_args(argv))  # only the flags on the command line
    values = asdict(config())
    saved = base(given) if base else None
    if saved is not None:
        saved_values, where = saved
        values.update({k: v for k, v in saved_values.items() if k in values})
        for name, check in config_checks(config, types).items():
            try:
                check(given.get(name, values[name]))
            except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
                parser.error(f"{where} has {name} = {values[name]!r}: {e}; "
                             f"pass --{name.replace('_', '-')} to override it")
    return config(**{**values, **given})
