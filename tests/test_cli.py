"""util/cli.py: the flag checks, and the command line generated from a config dataclass."""
from dataclasses import dataclass, field

import pytest

from util import cli


@dataclass
class Config:
    name: str = field(default="run", metadata={"help": "a name"})
    n: int = field(default=3, metadata={"min": 1, "help": "a count"})
    rate: float = field(default=0.5, metadata={"min": 0})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    fast: bool = field(default=True, metadata={"help": "go fast"})
    items: list[str] = field(default_factory=lambda: ["x", "y"])
    frames: int = 32


TYPES = {"frames": cli.count_or_all}


def parse(argv, base=None):
    parser = cli.config_parser(Config, "the test config", TYPES)
    return cli.parse_config(parser, Config, argv, TYPES, base)


def test_a_flag_per_field_with_the_defaults_of_the_dataclass():
    assert parse([]) == Config()
    assert parse(["--n", "1", "--rate", "0", "--frames", "7"]) == Config(n=1, rate=0, frames=7)
    cfg = parse(["--name", "z", "--n", "7", "--rate", "0.25", "--mode", "b", "--no-fast", "--items", "p", "q",
                 "--frames", "all"])
    assert cfg == Config("z", 7, 0.25, "b", False, ["p", "q"], None)


@pytest.mark.parametrize("argv", [["--n", "0"], ["--rate", "-1"], ["--n", "x"], ["--n", "1.5"],
                                  ["--mode", "c"], ["--frames", "0"], ["--frames", "x"]])
def test_a_bad_value_is_a_usage_error_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and argv[0] in err[-1]


def test_saved_values_are_the_base_and_pass_the_flag_checks(capsys):
    seen = []
    base = lambda given: seen.append(given) or ({"n": 5, "mode": "b", "x": 1}, "saved.json")  # noqa: E731
    cfg = parse(["--rate", "0.1"], base)
    assert seen == [{"rate": 0.1}]  # only the flags on the command line
    assert (cfg.n, cfg.mode, cfg.rate) == (5, "b", 0.1)  # the flags given win over the saved values
    assert parse([], lambda given: None) == Config()  # no base
    with pytest.raises(SystemExit) as e:  # a bad saved value: a usage error naming the flag to pass
        parse([], lambda given: ({"n": 0}, "saved.json"))
    assert e.value.code == 2 and "--n" in capsys.readouterr().err.strip().splitlines()[-1]
    assert parse(["--n", "4"], lambda given: ({"n": 0}, "saved.json")).n == 4
