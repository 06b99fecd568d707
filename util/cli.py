"""Command-line pieces the scripts share: number flags, a parser generated from a
config dataclass (every value checked before any work), and a progress bar over a list."""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from typing import Callable

from tqdm import tqdm


def at_least(kind: type, minimum: float, above: bool = False) -> Callable[[str], float]:
    """argparse type: a `kind` number >= minimum (> minimum when `above`)."""
    def check(value):
        number = kind(value)  # ValueError -> argparse's "invalid int value"
        if number < minimum or above and number == minimum:
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum}, "
                                             f"got {value}")
        return number
    check.__name__ = kind.__name__
    return check


def count_or_all(value: str) -> int | None:
    """argparse type of --frames: a number >= 1, or `all` (None: every frame)."""
    return None if value == "all" else at_least(int, 1)(value)


class Watched(list):
    """A list whose every iteration advances a progress bar: progress through a function that walks
    it once yet indexes it too (preprocess.face_tracks over the frames)."""

    def __init__(self, items, desc: str, unit: str = "frame"):
        super().__init__(items)
        self.desc, self.unit = desc, unit

    def __iter__(self):
        return iter(tqdm(super().__iter__(), total=len(self), desc=self.desc, unit=self.unit, leave=False,
                         disable=None))


def config_checks(config: type, types: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """Each checked field's argparse type: `types[name]`, else at_least(metadata `min`)."""
    checks, defaults = dict(types or {}), config()
    for f in fields(config):
        if "min" in f.metadata and f.name not in checks:
            checks[f.name] = at_least(type(getattr(defaults, f.name)), f.metadata["min"])
    return checks


def config_parser(config: type, description: str | None = None,
                  types: dict[str, Callable] | None = None) -> argparse.ArgumentParser:
    """A flag per field of the dataclass `config` (--x/--no-x for a boolean, nargs='+' for a list;
    metadata `help` and `choices`), defaults suppressed: parse_args returns the flags given only."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, checks = config(), config_checks(config, types)
    for f in fields(config):
        default = getattr(defaults, f.name)
        text = f.metadata.get("help", "")  # its own "(default: ...)" where the value says little
        text = text if "default" in text else f"{text} (default: {default})"
        kwargs = dict(default=argparse.SUPPRESS, help=text)
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
                 types: dict[str, Callable] | None = None,
                 base: Callable[[dict], tuple[dict, str] | None] | None = None):
    """The dataclass `config`: its defaults, updated by `base(flags given)` when that gives (saved
    values, where from), then by the flags given. A saved value the flags do not override passes
    its flag's check, or is a usage error (exit 2) naming the flag."""
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
