"""Logs: a hostile file name cannot drive the operator's terminal; a broken sink stops nothing."""

from __future__ import annotations

import io

import structlog

from watcher.logs import SafeLogger, configure_logging


def test_control_characters_in_a_name_are_shown_escaped_on_a_terminal(capsys):
    configure_logging(json=False)
    structlog.get_logger().info("file.claimed", file="a\nb\x1b[2J.xlsx")
    err = capsys.readouterr().err
    assert "a\\nb\\x1b[2J.xlsx" in err
    assert "\x1b[2J" not in err


def test_a_sink_that_breaks_is_reported_once_and_dropped(capsys):
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    logger = SafeLogger(Broken())
    logger.msg("first")  # never raises
    logger.msg("second")
    out = capsys.readouterr().out
    assert out.count("logging stopped") == 1
