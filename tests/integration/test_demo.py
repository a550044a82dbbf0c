"""`isales-watcher demo`: everything embedded, the two samples settle, and it stops cleanly."""

from __future__ import annotations

import subprocess
import sys


def _demo_once(folder):
    return subprocess.run(
        [sys.executable, "-m", "watcher", "demo", "--dir", str(folder), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_the_demo_settles_both_samples(tmp_path):
    result = _demo_once(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Inbox:" in result.stdout
    assert "IMPORTED: iSales imported this list" in result.stdout
    assert "REJECTED: nothing from this file was imported" in result.stdout
    assert "row 3, column called" in result.stdout
    inbox = tmp_path / "sftp" / "inbox" / "demo"
    assert len(list((inbox / "done").glob("valid-*.xlsx"))) == 1
    assert len(list((inbox / "rejected").glob("invalid-*.xlsx"))) == 1
    assert "Ctrl-C" not in result.stdout  # --once stops by itself
    assert "\x1b[" not in result.stderr  # no colours into a pipe
    # A second run starts clean: its samples are imported, not duplicates of a gone emulator.
    again = _demo_once(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "IMPORTED: iSales imported this list" in again.stdout
    assert len(list((inbox / "done").glob("valid-*.xlsx"))) == 1
