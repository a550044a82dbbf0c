"""A checker is bounded from outside: too slow or too greedy, it is killed and the file rejected."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.errors import CheckerUnavailableError
from watcher.validate.pool import CheckLimits, ValidationPool
from watcher.validate.report import ValidationOptions
from watcher.validate.xlsx import Limits


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_check_past_max_seconds_is_killed_and_the_file_rejected(
    make_world, emulator, upload, run_daemon
):
    world = make_world(daemon_extra="[validation]\nmax_seconds = 0.5\n")
    daemon = await run_daemon(world)
    pool = daemon.validation
    assert pool is not None
    seen: set[int] = set()

    def workers_seen() -> bool:
        seen.update(pool.pids)
        return bool(seen)

    await upload(world.inbox / "slow.xlsx", xlsxwriter_bytes(rows_valid(60_000, seed=90)))
    await wait_for(workers_seen, 60, "a checker at work")
    await wait_for(settled_as(world, "slow.xlsx", "rejected"), 60, "slow.xlsx rejected")
    receipt = world.settled("rejected", "slow.xlsx.result.txt").read_text()
    assert "longer than 0.5 s" in receipt
    assert "validation.max_seconds" in receipt
    assert not any(_alive(pid) for pid in seen), "the killed checker is gone, fork and all"
    assert emulator.uploads == []
    # The next file gets a fresh checker, within the same limit.
    await upload(world.inbox / "small.xlsx", xlsxwriter_bytes(rows_valid(3, seed=91)))
    await wait_for(settled_as(world, "small.xlsx", "done"), 45, "small.xlsx done")


@pytest.fixture
def big_sst(tmp_path: Path) -> Path:
    """A small valid list whose shared-strings table also holds ~120 MB of unused strings.

    The table is read whole, so checking it needs that much memory. It compresses ~1000 times,
    which the ZIP-bomb ratio would refuse first: the test relaxes that ratio to reach the ceiling.
    """
    small = zipfile.ZipFile(io.BytesIO(xlsxwriter_bytes(rows_valid(3, seed=92))))
    path = tmp_path / "big-sst.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in small.infolist():
            data = small.read(info)
            if info.filename != "xl/sharedStrings.xml":
                out.writestr(info, data)
                continue
            head, tail = data.split(b"</sst>")
            with out.open("xl/sharedStrings.xml", "w") as part:
                part.write(head)
                for index in range(120_000):
                    part.write(b"<si><t>filler %07d " % index + b"x" * 1000 + b"</t></si>")
                part.write(b"</sst>" + tail)
    return path


async def test_a_checker_past_max_memory_fails_its_allocation_and_the_file_is_rejected(big_sst):
    options = ValidationOptions(limits=Limits(max_ratio=100_000))
    pool = ValidationPool(1, CheckLimits(max_seconds=120, max_memory_mb=100))
    report = await pool.validate(str(big_sst), options)
    assert report.counts == {"check_failed": 1}
    message = str(report.as_json())
    assert "more than 100 MB" in message
    assert "max_memory_mb" in message
    # The same file, with room, is checked completely: the ceiling, not the file, failed it.
    roomy = ValidationPool(1, CheckLimits(max_seconds=120, max_memory_mb=1024))
    report = await roomy.validate(str(big_sst), options)
    assert report.data_rows == 3
    assert report.is_valid


class _NoForks:
    """A forkserver that cannot fork (as with EAGAIN from fork)."""

    def start(self, request: Any, answer: int) -> Any:
        raise BlockingIOError(11, "Resource temporarily unavailable")


async def test_a_pool_that_cannot_start_makes_the_daemon_unready_and_the_file_waits(
    make_world, emulator, upload, run_daemon
):
    world = make_world()
    daemon = await run_daemon(world)
    pool = daemon.validation
    assert pool is not None
    real = pool._forkserver
    pool._forkserver = _NoForks()
    await upload(world.inbox / "waits.xlsx", xlsxwriter_bytes(rows_valid(3, seed=93)))
    await wait_for(lambda: not pool.healthy, 45, "the pool unhealthy")
    ready, details = daemon.health.readiness()
    assert not ready
    assert details["checks"]["validation"] is False
    with pytest.raises(CheckerUnavailableError, match="cannot start a validation worker"):
        await pool.validate(os.devnull, ValidationOptions())
    assert not settled_as(world, "waits.xlsx", "rejected")(), "not judged without a check"
    pool._forkserver = real  # fork works again: the file goes on by itself
    await wait_for(settled_as(world, "waits.xlsx", "done"), 60, "waits.xlsx done")
    await wait_for(lambda: daemon.health.readiness()[1]["checks"]["validation"], 10, "ready")


def _ended(pid: int) -> bool:
    """Gone, or dead and not yet reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _children() -> dict[int, str]:
    """This process's child processes: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found[int(entry.name)] = line
    return found


def _small_list(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / "small.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=seed)))
    return path


async def test_a_pool_runs_one_helper_a_killed_one_is_replaced_and_shutdown_ends_it(tmp_path):
    path = _small_list(tmp_path, 95)
    before = _children()
    pool = ValidationPool(2, CheckLimits(max_seconds=60, max_memory_mb=1024))
    await pool.warm_up()
    assert pool.healthy
    # Besides the daemon, only its forkserver lives between checks: no resource tracker.
    helpers = {pid: line for pid, line in _children().items() if pid not in before}
    assert len(helpers) == 1, helpers
    [(server, line)] = helpers.items()
    assert "watcher.validate.forkserver" in line
    os.kill(server, signal.SIGKILL)  # as the OOM killer would
    await wait_for(lambda: _ended(server), 10, "the forkserver ended")
    report = await pool.validate(str(path), ValidationOptions())
    assert report.data_rows == 3
    assert report.is_valid
    assert pool.healthy
    [(again, line)] = [(p, c) for p, c in _children().items() if p not in before]
    assert again != server
    assert "watcher.validate.forkserver" in line
    pool.shutdown()
    assert not _alive(again)
    assert [p for p in _children() if p not in before] == []


async def test_a_check_running_at_shutdown_is_not_tried_again_on_a_new_forkserver(tmp_path):
    path = tmp_path / "small.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(60_000, seed=96)))
    before = _children()
    pool = ValidationPool(1, CheckLimits(max_seconds=60, max_memory_mb=1024))
    check = asyncio.ensure_future(pool.validate(str(path), ValidationOptions()))
    await wait_for(lambda: pool.pids, 30, "a checker at work")
    os.kill(pool.pids[0], signal.SIGSTOP)  # it would otherwise be done before the shutdown
    pool.shutdown()
    with pytest.raises(CheckerUnavailableError, match="shut down"):
        await check
    assert [p for p in _children() if p not in before] == []


def _forkserver(before: dict[int, str]) -> int:
    [server] = [pid for pid, line in _children().items() if pid not in before]
    return server


async def test_a_forkserver_that_does_not_answer_is_replaced_within_the_wall_clock(tmp_path):
    """A stopped server must not hold a file for ever, nor a cancelled check leak its pipe."""
    path = _small_list(tmp_path, 97)
    before = _children()
    pool = ValidationPool(1, CheckLimits(max_seconds=2, max_memory_mb=1024))
    await pool.warm_up()
    server = _forkserver(before)
    fds = len(os.listdir("/proc/self/fd"))
    os.kill(server, signal.SIGSTOP)
    with pytest.raises(CheckerUnavailableError, match="forkserver ended"):
        await asyncio.wait_for(pool.validate(str(path), ValidationOptions()), 60)
    await wait_for(lambda: _ended(server), 10, "the stopped forkserver killed")
    assert not pool.healthy  # readiness says so until a checker starts again
    report = await asyncio.wait_for(pool.validate(str(path), ValidationOptions()), 60)
    assert report.is_valid
    assert pool.healthy
    # A check cancelled while the server does not answer (the daemon stopping) leaks nothing.
    os.kill(_forkserver(before), signal.SIGSTOP)
    check = asyncio.ensure_future(pool.validate(str(path), ValidationOptions()))
    await asyncio.sleep(0.5)
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    os.kill(_forkserver(before), signal.SIGCONT)
    await wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds, 10, "the pipes closed")
    pool.shutdown()
    assert [p for p in _children() if p not in before] == []


async def test_the_validate_command_keeps_the_same_limits(tmp_path):
    slow = tmp_path / "slow.xlsx"
    slow.write_bytes(xlsxwriter_bytes(rows_valid(60_000, seed=94)))
    code, output = await cli("validate", "--max-seconds", "0.3", str(slow))
    assert code == 2  # unreadable: not judged
    assert "the file: checking this file took longer than 0.3 s" in output
    code, output = await cli("validate", str(slow))
    assert code == 0, output
    assert "valid, 60000 data rows" in output


async def test_the_progress_of_a_sheet_checked_by_two_processes_adds_up(tmp_path):
    path = tmp_path / "big.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(20000, seed=5)))
    seen: list[tuple[int, int]] = []
    pool = ValidationPool(1, CheckLimits(60, 2048), start="fork")
    both = ValidationOptions(workers=2, split_min_bytes=1)  # the parent and a fork, half each
    report = await pool.validate(str(path), both, lambda read, total: seen.append((read, total)))
    assert report.is_valid
    assert report.data_rows == 20000
    reads = [read for read, _ in seen]
    assert reads == sorted(reads)
    # The count is fed by both processes: the parent's half alone would stop near 54%.
    assert reads[-1] >= 0.95 * seen[-1][1]


def test_validate_draws_one_bar_that_only_moves_forward_and_only_on_a_terminal(tmp_path):
    path = tmp_path / "big.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(20000, seed=6)))
    command = [sys.executable, "-m", "watcher", "validate", str(path)]
    terminal, its_end = pty.openpty()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=its_end
    )
    os.close(its_end)
    drawn = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(terminal)
    assert process.wait(60) == 0
    assert process.stdout is not None
    assert b"valid, 20000 data rows" in process.stdout.read()
    percents = [int(p) for p in re.findall(rb"\] +(\d+)%", drawn)]
    assert percents, drawn
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert drawn.endswith(b"\r")  # the bar is wiped before the verdict is printed
    # Not on a terminal: no bar at all.
    piped = subprocess.run(command, capture_output=True, timeout=60)
    assert piped.returncode == 0
    assert piped.stderr == b""
