"""The daemon under load, measured from outside: a benchmark, not a test.

The daemon runs as its own process (``isales-watcher run``) against a real OpenSSH sshd whose
SFTP server logs every request, and the iSales emulator (in this process, over real HTTP).
CPU and memory are those of the daemon's whole process tree (validation workers and their forks
included: utime+stime and the sum of PSS from /proc).

    python bench/throughput.py [--files 1000] [--crowd 20000] [--seconds 60] [--only NAME ...]

Scenarios, each with a fresh daemon:
- idle: 10 empty inboxes, poll 5 s: CPU % and PSS.
- crowded: one inbox with ``--crowd`` names the route does not take (``unmatched = "ignore"``),
  poll 5 s: CPU per poll (on average, and the median and the largest of each 5 s period: an
  unchanged folder's poll, and one that lists it), listings made, the period kept; beside it,
  OpenSSH's ``sftp`` client listing the same folder (its wall time and CPU) in the same run.
- latency: settle 2 s, poll 1 s: from a list's rename into the inbox to iSales' upload call,
  the first list after the start included.
- burst: ``--files`` small lists at once, iSales answering in 50 ms: the time until all are
  imported, uploads per file (duplicates), the most files in ``processing/`` at once (bounded by
  ``max_in_flight``), peak PSS.
- requests: SFTP requests per small file, from the server's own log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp.web
import structlog

from tests.sftpservers import Sshd, counting_sshd_at, requests_of, session_logs
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.emulator import Emulator, RegisteredServer

AK, SK, VDN = "bench-ak", "bench-sk-0123456789", 7
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the daemon's process tree, from /proc ----------------------------------------------------


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def tree_cpu_s(root: int) -> float:
    """utime + stime of the tree's live processes and of the children they waited for."""
    total = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def tree_pss_mb(root: int) -> float:
    total = 0
    for pid in _tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in rollup.splitlines() if x.startswith("Pss:")), 0)
    return total / 1024


# --- one world: sshd, emulator, a daemon -------------------------------------------------------


@dataclass
class World:
    folder: Path
    sshd: Sshd
    emulator: Emulator
    inboxes: list[Path] = field(default_factory=list)
    daemon: subprocess.Popen[bytes] | None = None

    def config(self, routes: str, daemon: str) -> Path:
        sk = self.folder / "sk"
        sk.write_text(SK)
        text = f"""\
[isales]
base_url = "{self.emulator.base_url}"
allow_insecure_http = true
vdn_id = {VDN}
access_key = "{AK}"
secret_key_file = "{sk}"
track_poll_s = 0.5

[sftp]
host = "127.0.0.1"
port = {self.sshd.port}
username = "{self.sshd.username}"
private_key_file = "{self.sshd.client_key}"
known_hosts_file = "{self.sshd.known_hosts}"
base_path = "{self.sshd.base_path}"

{routes}

[daemon]
state_dir = "{self.folder / "state"}"
control_listen = ""
{daemon}
"""
        path = self.folder / "config.toml"
        path.write_text(text)
        return path

    def route(self, name: str, extra: str = "") -> str:
        inbox = self.sshd.root / "inbox" / name
        inbox.mkdir(parents=True)
        self.inboxes.append(inbox)
        self.emulator.campaigns.add(f"c-{name}")
        return (
            f'[[routes]]\nname = "{name}"\ninbox = "{self.sshd.remote(inbox)}"\n'
            f'campaign_id = "c-{name}"\n{extra}\n'
        )

    async def start(self, config: Path) -> float:
        """Start the daemon; returns when it said it started (monotonic time)."""
        log = (self.folder / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while b'"daemon.started"' not in (self.folder / "daemon.log").read_bytes():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    def log_tail(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            self.daemon.wait(60)


async def world(
    folder: Path, sshd: Sshd, scenario: Callable[[World], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run one scenario with its own emulator, inboxes and daemon."""
    emulator = Emulator(
        access_key=AK,
        secret_key=SK,
        vdn_id=VDN,
        campaigns=set(),
        import_delay_s=0.2,
        servers=[
            RegisteredServer(
                "fs-1",
                sshd.host,
                sshd.port,
                sshd.username,
                sshd.base_path,
                connect_options=sshd.connect_options(),
            )
        ],
    )
    latency_s = getattr(scenario, "isales_latency_s", 0.0)
    if latency_s:

        @aiohttp.web.middleware
        async def slow(request: aiohttp.web.Request, handler: Any) -> Any:
            await asyncio.sleep(latency_s)
            return await handler(request)

        emulator.app.middlewares.insert(0, slow)
    await emulator.start()
    here = World(Path(tempfile.mkdtemp(prefix=f"{scenario.__name__}-", dir=folder)), sshd, emulator)
    try:
        return await scenario(here)
    finally:
        here.stop()
        await emulator.close()


def drop(inbox: Path, name: str, data: bytes) -> float:
    """Write under a temporary name, then rename: the time the list became whole."""
    temporary = inbox / f".{name}.part"
    temporary.write_bytes(data)
    temporary.rename(inbox / name)
    return time.monotonic()


# --- the scenarios ----------------------------------------------------------------------------


async def idle(w: World) -> dict[str, Any]:
    routes = "".join(w.route(f"idle-{i}") for i in range(10))
    await w.start(w.config(routes, "poll_interval_s = 5"))
    assert w.daemon is not None
    await asyncio.sleep(10)  # past the start
    cpu0, t0, pss = tree_cpu_s(w.daemon.pid), time.monotonic(), []
    while time.monotonic() - t0 < ARGS.seconds:
        pss.append(tree_pss_mb(w.daemon.pid))
        await asyncio.sleep(1)
    cpu = tree_cpu_s(w.daemon.pid) - cpu0
    return {
        "cpu_percent": round(100 * cpu / (time.monotonic() - t0), 2),
        "pss_mb_median": round(statistics.median(pss), 1),
        "pss_mb_peak": round(max(pss), 1),
    }


def _sftp_listing(w: World, folder: str) -> tuple[float, float]:
    """OpenSSH's sftp client listing ``folder``: (wall seconds, CPU seconds of the client)."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(
        [
            "sftp",
            "-q",
            "-b",
            "-",
            "-i",
            str(w.sshd.client_key),
            "-o",
            f"UserKnownHostsFile={w.sshd.known_hosts}",
            "-P",
            str(w.sshd.port),
            f"{w.sshd.username}@127.0.0.1",
        ],
        input=f"ls -1 {folder}\n".encode(),
        capture_output=True,
        check=True,
    )
    wall = time.perf_counter() - started
    after = os.times()
    return wall, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


async def crowded(w: World) -> dict[str, Any]:
    route = w.route("crowded", 'unmatched = "ignore"')
    inbox = w.inboxes[0]
    for i in range(ARGS.crowd):
        (inbox / f"notes-{i:06}.txt").write_bytes(b"x")
    await w.start(w.config(route, "poll_interval_s = 5\nsettle_s = 2"))
    assert w.daemon is not None
    await asyncio.sleep(10)  # the first listings, until the folder's mtime is old enough
    remote = w.sshd.remote(inbox)
    cpu0, t0 = tree_cpu_s(w.daemon.pid), time.monotonic()
    each = []  # the CPU of each poll period: most poll an unchanged folder, a few list it
    for _ in range(max(1, round(ARGS.seconds / 5))):
        before = tree_cpu_s(w.daemon.pid)
        await asyncio.sleep(5)
        each.append(tree_cpu_s(w.daemon.pid) - before)
    cpu, elapsed = tree_cpu_s(w.daemon.pid) - cpu0, time.monotonic() - t0
    [log] = [p for p in session_logs(w.sshd) if f'opendir "{remote}"'.encode() in p.read_bytes()]
    requests = requests_of(log)
    stats = sum(1 for r in requests if r.op == "stat" and r.paths == [remote])
    listings = sum(1 for r in requests if r.op == "opendir" and r.paths == [remote])
    clients = [_sftp_listing(w, remote) for _ in range(3)]
    polls = elapsed / 5
    return {
        "names": ARGS.crowd,
        "polls": round(polls, 1),
        "cpu_ms_per_poll": round(1000 * cpu / polls, 1),
        "cpu_ms_per_poll_period_median": round(1000 * statistics.median(each), 1),
        "cpu_ms_per_poll_period_max": round(1000 * max(each), 1),
        "cpu_percent": round(100 * cpu / elapsed, 2),
        "stats_of_the_inbox_in_the_run": stats,
        "listings_in_the_whole_run": listings,
        "openssh_sftp_ls_wall_ms_median": round(1000 * statistics.median(c[0] for c in clients)),
        "openssh_sftp_ls_cpu_ms_median": round(1000 * statistics.median(c[1] for c in clients)),
    }


async def latency(w: World) -> dict[str, Any]:
    route = w.route("latency")
    inbox = w.inboxes[0]
    await w.start(w.config(route, "poll_interval_s = 1\nsettle_s = 2"))
    waits = []
    for i in range(6):
        made = drop(inbox, f"list-{i}.xlsx", xlsxwriter_bytes(rows_valid(3, seed=1000 + i)))
        while len(w.emulator.uploads) <= i:
            await asyncio.sleep(0.01)
        upload = next(c for c in reversed(w.emulator.calls) if "uploadFileServer" in c.path)
        waits.append(upload.at - made)
        await asyncio.sleep(1.3)  # a list now and then, at any point of the poll
    return {
        "settle_s_plus_poll_s": 3.0,
        "first_after_start_s": round(waits[0], 2),
        "median_s": round(statistics.median(waits), 2),
        "max_s": round(max(waits), 2),
        "each_s": [round(x, 2) for x in waits],
    }


async def burst(w: World) -> dict[str, Any]:
    route = w.route("burst")
    inbox = w.inboxes[0]
    started = await w.start(w.config(route, "poll_interval_s = 1\nsettle_s = 1"))
    assert w.daemon is not None
    for i in range(ARGS.files):
        drop(inbox, f"burst-{i:05}.xlsx", xlsxwriter_bytes(rows_valid(3, seed=5000 + i)))
    dropped = time.monotonic()
    processing = inbox / "processing"
    most = 0
    peak = 0.0
    done = inbox / "done"
    deadline = dropped + 1800
    while time.monotonic() < deadline:
        in_flight = sum(1 for p in processing.iterdir() if p.is_dir()) if processing.exists() else 0
        most = max(most, in_flight)
        peak = max(peak, tree_pss_mb(w.daemon.pid))
        finished = sum(1 for p in done.glob("*.result.txt")) if done.exists() else 0
        if finished >= ARGS.files:
            break
        await asyncio.sleep(0.25)
    names = [u.file_name for u in w.emulator.uploads]
    return {
        "files": ARGS.files,
        "all_imported_s": round(time.monotonic() - dropped, 1),
        "since_start_s": round(time.monotonic() - started, 1),
        "uploads": len(names),
        "duplicates": len(names) - len(set(names)),
        "most_in_processing": most,
        "max_in_flight": 200,
        "peak_pss_mb": round(peak, 1),
    }


burst.isales_latency_s = 0.05  # type: ignore[attr-defined]


async def requests(w: World) -> dict[str, Any]:
    route = w.route("requests")
    inbox = w.inboxes[0]
    await w.start(w.config(route, "poll_interval_s = 0.5\nsettle_s = 0.5"))
    files = 5
    for i in range(files):
        drop(inbox, f"req-{i}.xlsx", xlsxwriter_bytes(rows_valid(3, seed=9000 + i)))
        receipt = inbox / "done" / f"req-{i}.xlsx.result.txt"
        while len(w.emulator.uploads) <= i or not receipt.exists():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    remote = w.sshd.remote(inbox)
    [log] = [p for p in session_logs(w.sshd) if f'opendir "{remote}"'.encode() in p.read_bytes()]
    # A file's: its name, its processing/<id>/ folder, its receipts (temporary ones included);
    # not the inbox's listing, the lease, nor the access check at the start.
    per_file = [
        r
        for r in requests_of(log)
        if r.paths
        and not any(".isales-watcher-probe" in p or "/.isales-watcher/" in p for p in r.paths)
        and any("req-" in p or "/processing/" in p or "/done/" in p for p in r.paths)
    ]
    return {"files": files, "requests_per_file": round(len(per_file) / files, 1)}


SCENARIOS = {f.__name__: f for f in (idle, crowded, latency, burst, requests)}


async def main() -> None:
    # The emulator's own log lines would bury the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"cores {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    folder = Path(tempfile.mkdtemp(prefix="isales-throughput-"))
    with counting_sshd_at(folder / "sshd") as sshd:
        for name in ARGS.only or list(SCENARIOS):
            result = await world(folder, sshd, SCENARIOS[name])
            print(f"{name:9} {result}", flush=True)
    print(f"load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--crowd", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    ARGS = parser.parse_args()
    asyncio.run(main())
