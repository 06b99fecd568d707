"""util/cli.py: the flag checks, and the command line generated from a config dataclass."""
import argparse
from dataclasses import dataclass, field

import pytest
import torch

from util import cli


@dataclass
class Config:
    name: str = field(default="run", metadata={"help": "a name"})
    n: int = field(default=3, metadata={"min": 1, "help": "a count"})
    rate: float = field(default=0.5, metadata={"min": 0})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    fast: bool = field(default=True, metadata={"help": "go fast"})
    items: list[str] = field(default_factory=lambda: ["x", "y"])
    device: str = "auto"


TYPES = {"device": cli.device_flag}


def parse(argv, base=None):
    parser = cli.config_parser(Config, "the test config", TYPES)
    return cli.parse_config(parser, Config, argv, TYPES, base)


def test_at_least_and_device_flag():
    assert cli.at_least(int, 1)("3") == 3 and cli.at_least(float, 0)("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        cli.at_least(int, 1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be above 0, got 0"):
        cli.at_least(float, 0, above=True)("0")
    with pytest.raises(ValueError):
        cli.at_least(int, 1)("x")
    assert cli.device_flag("auto") == "auto" and cli.device_flag("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="'gpu' is not a device"):
        cli.device_flag("gpu")
    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_flag_per_field_with_the_defaults_of_the_dataclass():
    assert parse([]) == Config()
    cfg = parse(["--name", "z", "--n", "7", "--rate", "0.25", "--mode", "b", "--no-fast", "--items", "p", "q", "r",
                 "--device", "cpu"])
    assert cfg == Config("z", 7, 0.25, "b", False, ["p", "q", "r"], "cpu")
    help_text = cli.config_parser(Config, "the test config", TYPES).format_help()
    assert "the test config" in help_text and "a count (default: 3)" in help_text and "--fast, --no-fast" in help_text


@pytest.mark.parametrize("argv, message", [(["--n", "0"], "argument --n: must be at least 1, got 0"),
                                           (["--rate", "-1"], "argument --rate: must be at least 0"),
                                           (["--n", "x"], "argument --n: invalid int value: 'x'"),
                                           (["--mode", "c"], "argument --mode: invalid choice: 'c'"),
                                           (["--device", "gpu"], "argument --device: 'gpu' is not a device")])
def test_a_bad_value_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_saved_values_are_the_base_and_pass_the_flag_checks(capsys):
    seen = []

    def base(given):
        seen.append(given)
        return {"n": 5, "mode": "b", "unknown": 1}, "saved.json"

    cfg = parse(["--rate", "0.1"], base)
    assert seen == [{"rate": 0.1}]  # only the flags on the command line
    assert (cfg.n, cfg.mode, cfg.rate) == (5, "b", 0.1)  # the flags given win over the saved values
    assert parse(["--n", "2"], base).n == 2
    assert parse([], lambda given: None) == Config()  # no base
    with pytest.raises(SystemExit) as e:
        parse([], lambda given: ({"n": 0}, "saved.json"))
    assert e.value.code == 2
    assert "saved.json has n = 0: must be at least 1, got 0; pass --n to override it" in capsys.readouterr().err
    assert parse(["--n", "4"], lambda given: ({"n": 0}, "saved.json")).n == 4  # the way out it names


def test_count_or_all():
    assert cli.count_or_all("all") is None and cli.count_or_all("7") == 7
    for value, says in (("0", "must be at least 1, got 0"), ("x", "expected a number (at least 1) or 'all', got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=says.replace("(", r"\(").replace(")", r"\)")):
            cli.count_or_all(value)


def test_watched_list_drives_a_progress_bar_on_each_pass(monkeypatch):
    bars = []
    monkeypatch.setattr(cli, "tqdm", lambda items, **kwargs: bars.append(kwargs) or items)
    frames = cli.Watched(["a", "b", "c"], "clip.mp4")
    assert [f for f in frames] == ["a", "b", "c"] and frames[1] == "b" and len(frames) == 3
    assert isinstance(frames, list) and [(b["total"], b["desc"], b["unit"]) for b in bars] == [(3, "clip.mp4", "frame")]
