"""The command reference: every option has help text and is in the README's table, so the two stay in step."""

from __future__ import annotations

import pathlib
import re

import click
import pytest

from goodregions.cli import main

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _rows() -> dict[str, str]:
    """The README's command table: command name -> its first cell."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `goodregions ([a-z-]+)(.*?)` \|", line)
        if match:
            rows[match[1]] = match[2]
    return rows


COMMANDS = sorted(main.commands)


def _mentions(row: str, flag: str) -> bool:
    return re.search(re.escape(flag) + r"(?![a-z-])", row) is not None


def _options(name: str) -> list[click.Option]:
    return [p for p in main.commands[name].params if isinstance(p, click.Option) and p.name != "help"]


def test_every_command_has_a_row():
    assert sorted(_rows()) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_is_in_the_readme(name):
    row = _rows().get(name, "")
    undocumented = [p.opts[0] for p in _options(name) if not (p.help or "").strip()]
    missing = [p.opts[0] for p in _options(name) if not any(_mentions(row, flag) for flag in p.opts)]
    assert not undocumented, f"{name}: options without help text: {undocumented}"
    assert not missing, f"{name}: options missing from the README's row: {missing}"


def test_the_check_sees_a_missing_option():
    assert not _mentions("goodregions demo [--out DIR] [--epochs-x 3]", "--epochs")
    assert _mentions("goodregions demo [--out DIR] [--epochs 3]", "--epochs")
