"""The proof: 200 files, a daemon SIGKILLed 20 times at seeded moments, 20 % of answers lost.

Some kills land between an accepted POST and the ledger write, some while a lost answer is
being reconciled, the rest at random. Afterwards no list was imported twice, every file is
settled or parked with a reason, and every IMPORTED receipt names a task whose import read
exactly that file's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from tests.conftest import new_emulator, wait_for
from tests.integration.test_crash import _start
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.emulator import Emulator
from watcher.isales.faults import Fault, FaultKind

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FILES = 200
KILLS = 20
SEED = 20261129
LOST_ANSWERS = (
    Fault(FaultKind.drop_after_accept),
    Fault(FaultKind.accept_then_502),
    Fault(FaultKind.accept_then_504),
    Fault(FaultKind.broken_body),
    Fault(FaultKind.delay, delay_s=2.0),  # answered after our 1 s timeout
)


class KillPlan:
    """Decides, call by call, when to SIGKILL the daemon; seeded, so a run can be repeated."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.process: Any = None
        self.kills: Counter[str] = Counter()
        self.budget = {"after_post": 8, "reconciling": 6, "random": KILLS - 14}

    def total(self) -> int:
        return sum(self.kills.values())

    def kill(self, moment: str) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            self.kills[moment] += 1
            self.budget[moment] -= 1
            self.process = None

    async def keep_running(self, config: Path) -> None:
        if self.process is not None and self.process.returncode not in (None, -9):
            raise AssertionError(f"the daemon exited {self.process.returncode}: see its log")
        if self.process is None or self.process.returncode is not None:
            self.process = await _start(config)

    def should(self, moment: str, chance: float) -> bool:
        return self.budget[moment] > 0 and self.random.random() < chance


def make_emulator(sshd, plan: KillPlan) -> Emulator:
    emulator = new_emulator(sshd, import_delay_s=0.1)
    faults = random.Random(SEED + 1)
    original = emulator.faults.next_fault

    def lose_answers(endpoint: str) -> Fault | None:
        if endpoint == "upload" and faults.random() < 0.2:
            return faults.choice(LOST_ANSWERS)
        return original(endpoint)

    emulator.faults.next_fault = lose_answers  # type: ignore[method-assign]

    @aiohttp.web.middleware
    async def killer(request: aiohttp.web.Request, handler: Any) -> aiohttp.web.StreamResponse:
        body = await request.read()
        if "uploadFileServer" in request.path:
            response = await handler(request)  # accepted: the task exists
            if plan.should("after_post", 0.08):
                plan.kill("after_post")  # before the answer reaches the ledger
            return response
        # A listing without the filter: a reconciliation (or tracking paging through).
        listing = "queryDataImportTask" in request.path and b"importTaskIds" not in body
        if listing and plan.should("reconciling", 0.3):
            plan.kill("reconciling")
        return await handler(request)

    emulator.app.middlewares.insert(0, killer)
    return emulator


def ledger_rows(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "ledger.sqlite3"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM files ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []


async def test_200_files_20_kills_20_percent_lost_answers(make_world, upload, sshd, tmp_path):
    plan = KillPlan(SEED)
    emulator = make_emulator(sshd, plan)
    url = await emulator.start()
    world = make_world(
        base_url=url,
        settle_s=0.3,
        isales_extra="allow_insecure_http = true\nrequest_timeout_s = 1\n"
        "reconcile_grace_s = 3\nreconcile_recheck_s = 1",
        daemon_extra="retry_backoff_s = 0.2\nmax_backoff_s = 1\nmax_parallel_files = 4",
    )
    emulator.campaigns.add(world.campaign)
    dropped: dict[str, str] = {}  # name -> sha256 of its bytes
    started = time.monotonic()

    async def supervise() -> None:
        """Keep a daemon running; now and then kill it at a random moment."""
        while True:
            await plan.keep_running(world.config)
            await asyncio.sleep(0.5)
            if plan.should("random", 0.04):
                plan.kill("random")

    async def drop_all() -> None:
        for i in range(FILES):
            # A different row count for every file: the count rule can tell them apart.
            data = xlsxwriter_bytes(rows_valid(1 + i, seed=1000 + i))
            name = f"list-{i:03d}.xlsx"
            dropped[name] = hashlib.sha256(data).hexdigest()
            await upload(world.inbox / name, data)
            await asyncio.sleep(0.05)

    def all_ended() -> bool:
        rows = [r for r in ledger_rows(world.state_dir) if r["state"] != "lost"]
        ended = {r["name"] for r in rows if r["state"] in ("done", "rejected", "uncertain")}
        return len(dropped) == FILES and ended >= set(dropped)

    supervisor = asyncio.create_task(supervise())

    def ended_or_broken() -> bool:
        if supervisor.done():
            supervisor.result()
        return all_ended()

    try:
        await drop_all()
        await wait_for(ended_or_broken, 900, "every file to end")
    finally:
        supervisor.cancel()
        if plan.process is not None and plan.process.returncode is None:
            plan.process.terminate()
            await plan.process.wait()
        await emulator.close()

    check_the_proof(world, emulator, plan, dropped, started)


def check_the_proof(world, emulator: Emulator, plan: KillPlan, dropped, started: float) -> None:
    rows = ledger_rows(world.state_dir)
    final = {r["name"]: r for r in rows if r["state"] in ("done", "rejected", "uncertain")}
    states = Counter(r["state"] for r in final.values())
    lost_answers = Counter(c.fault.kind.value for c in emulator.calls if c.fault)
    print(
        f"\nkill loop: {FILES} files in {time.monotonic() - started:.0f} s; kills "
        f"{dict(plan.kills)}; lost answers {dict(lost_answers)}; uploads "
        f"{len(emulator.uploads)}; final {dict(states)}"
    )
    # Zero duplicate imports: no file's bytes were imported twice.
    imported = Counter(u.fetched_sha256 for u in emulator.uploads if u.fetched_sha256)
    assert all(n == 1 for n in imported.values()), imported.most_common(3)
    names = Counter(u.file_name for u in emulator.uploads)
    assert all(n == 1 for n in names.values()), names.most_common(3)
    # Every file settled, or parked with a reason.
    assert set(final) == set(dropped)
    assert all(r["reason"] for r in final.values() if r["state"] == "uncertain")
    # Every IMPORTED receipt names a task whose import read exactly that file's bytes.
    by_task = {u.task_id: u for u in emulator.uploads}
    done = [name for name, row in final.items() if row["state"] == "done"]
    for name in done:
        receipt = json.loads((world.inbox / "done" / f"{name}.result.json").read_text())
        upload_call = by_task[receipt["import_task_id"]]
        assert upload_call.fetched_sha256 == dropped[name], name
        assert upload_call.file_name == name
    assert plan.total() >= KILLS * 3 // 4, plan.kills
    assert states["done"] >= FILES * 0.9, states
