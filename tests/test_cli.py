"""The command line: `peft-repro` and `python -m bench` are one parser; `list` prints each registry one line per
entry; every option says what it takes."""

import argparse
import tomllib
from pathlib import Path

import pytest

from bench import cli

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_is_the_same_command_line():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"peft-repro": "bench.cli:console"}


@pytest.mark.parametrize(
    "what, name", [("models", "tiny-llama"), ("tasks", "sst2"), ("grids", "smoke"), ("methods", "lora")]
)
def test_list_prints_one_line_per_entry(what, name, capsys):
    assert cli.main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == name and len(line.split()) > 1 for line in lines)  # a name and what it is
    assert len({line.split()[0] for line in lines}) == len(lines)


def test_every_option_has_help(monkeypatch):
    parsers = []
    monkeypatch.setattr(
        argparse.ArgumentParser,
        "parse_args",
        lambda self, argv=None: parsers.append(self) or (_ for _ in ()).throw(SystemExit(0)),
    )
    with pytest.raises(SystemExit):
        cli.main([])
    sub = next(a for a in parsers[0]._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.dest}"
        for name, parser in sub.choices.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
