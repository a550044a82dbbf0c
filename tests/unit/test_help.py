"""Every command explains itself: a description, an example and its exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from watcher.cli import _parser


def _commands(
    parser: argparse.ArgumentParser, name: str = "isales-watcher"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _commands(sub, f"{name} {sub_name}")


def test_every_command_has_a_description_an_example_and_exit_codes():
    commands = dict(_commands(_parser()))
    assert {"isales-watcher config show", "isales-watcher ledger resolve"} <= set(commands)
    for name, parser in commands.items():
        if name == "isales-watcher":
            continue
        text = " ".join(parser.format_help().split())
        assert parser.description, name
        assert f"Example: {name}" in text, name
        assert "Exit codes:" in text, name
        # A command line in the text is never cut at a hyphen by the layout.
        assert "isales- watcher" not in parser.format_help().replace("\n", " "), name
