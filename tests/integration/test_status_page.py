"""The status page of a running daemon, read in a real browser (headless Chromium, Selenium)."""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.conftest import ACCESS_KEY, SECRET_KEY, World, cli, wait_for
from tests.sftpservers import free_port, require
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.faults import Fault, FaultKind
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FAST = (
    "request_timeout_s = 1\nreconcile_grace_s = 2\nreconcile_recheck_s = 60\n"
    "allow_insecure_http = true"
)
HOSTILE = "<script>alert(1)<script>.xlsx"  # no '/' in a file name: this is as close as it gets
SHOTS = os.environ.get("STATUS_PAGE_SHOTS")  # a folder: keep the screenshots there


def row_named(world: World, name: str) -> FileRecord | None:
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return next((r for r in ledger.rows() if r.name == name), None)
    finally:
        ledger.close()


def in_state(world: World, name: str, state: FileState) -> Callable[[], bool]:
    def check() -> bool:
        row = row_named(world, name)
        return row is not None and row.state is state

    return check


def browser(width: int, height: int) -> webdriver.Chrome:
    """Headless Chromium of the system (no browser download), driven by its chromedriver."""
    require(CHROMEDRIVER, "chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def read_page(url: str, ids: dict[str, str], shots: Path) -> dict[str, Any]:
    """What a person sees on the page: on a desktop, then on a phone (in a worker thread: the
    daemon serving the page runs on the test's event loop)."""
    seen: dict[str, Any] = {}
    driver = browser(1280, 1400)
    try:
        driver.get(url)
        seen["title"] = driver.title
        attention = driver.find_element(By.ID, "attention")
        seen["attention"] = attention.text
        seen["commands"] = [e.text for e in attention.find_elements(By.CSS_SELECTOR, "pre code")]
        for name, file_id in ids.items():
            row = driver.find_element(By.ID, f"file-{file_id}")
            seen[name] = {
                "name": row.find_element(By.CLASS_NAME, "name").text,
                "badge": row.find_element(By.CLASS_NAME, "badge").text,
            }
        seen["scripts"] = len(driver.find_elements(By.TAG_NAME, "script"))
        try:
            seen["alert"] = driver.switch_to.alert.text
        except NoAlertPresentException:
            seen["alert"] = None
        seen["routes"] = driver.find_element(By.ID, "routes").text
        driver.save_screenshot(str(shots / "desktop.png"))
        receipt = driver.find_element(By.ID, f"file-{ids['hostile']}")
        receipt.find_element(By.LINK_TEXT, "text").click()
        seen["receipt"] = driver.find_element(By.TAG_NAME, "body").text
        # A phone: nothing wider than the screen.
        driver.set_window_size(390, 2600)
        driver.get(url)
        seen["phone_overflow"] = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        driver.save_screenshot(str(shots / "phone.png"))
    finally:
        driver.quit()
    return seen


async def test_the_status_page_shows_each_file_and_the_command_that_settles_it(
    make_world, run_daemon, emulator, upload, tmp_path
):
    port = free_port()
    world = make_world(
        control_listen=f"127.0.0.1:{port}",
        isales_extra=FAST,
        daemon_extra="retry_backoff_s = 0.2\nmax_backoff_s = 1",
    )
    # The first upload's answer is lost (nothing imported: the file ends uncertain); the
    # second is accepted and imported slowly (it is tracked, and parked by an operator).
    emulator.faults.script(
        "upload", Fault(FaultKind.status, status=500), Fault(FaultKind.slow_import, delay_s=600)
    )
    await run_daemon(world)
    config = ("--config", str(world.config))
    await upload(world.inbox / "lost answer.xlsx", xlsxwriter_bytes(rows_valid(3, seed=1)))
    await wait_for(in_state(world, "lost answer.xlsx", FileState.uncertain), 30, "uncertain")
    await upload(world.inbox / "hold me.xlsx", xlsxwriter_bytes(rows_valid(3, seed=2)))
    await wait_for(in_state(world, "hold me.xlsx", FileState.tracking), 30, "tracking")
    code, output = await cli("ledger", "park", "hold me.xlsx", "--reason", "paused", *config)
    assert code == 0, output
    await upload(world.inbox / "march.xlsx", xlsxwriter_bytes(rows_valid(3, seed=3)))
    bad = rows_valid(3, seed=4)
    bad[1][1] = "nope"
    await upload(world.inbox / HOSTILE, xlsxwriter_bytes(bad))
    await wait_for(world.settled("done", "march.xlsx.result.txt").exists, 30, "march done")
    await wait_for(world.settled("rejected", f"{HOSTILE}.result.txt").exists, 30, "rejected")

    rows = {
        key: row_named(world, name)
        for key, name in (
            ("uncertain", "lost answer.xlsx"),
            ("parked", "hold me.xlsx"),
            ("march", "march.xlsx"),
            ("hostile", HOSTILE),
        )
    }
    ids = {key: row.id for key, row in rows.items() if row is not None}
    shots = Path(SHOTS) if SHOTS else tmp_path
    seen = await asyncio.to_thread(read_page, f"http://127.0.0.1:{port}/", ids, shots)

    assert seen["title"] == "(2) isales-watcher status"  # two files wait for an operator
    where = shlex.quote(str(world.config))
    assert seen["commands"] == [
        f'isales-watcher ledger resolve {ids["uncertain"]} --imported TASK_ID --reason "..." '
        f"--config {where}",
        f'isales-watcher ledger resolve {ids["uncertain"]} --not-imported --reason "..." '
        f"--config {where}",
        f'isales-watcher ledger unpark {ids["parked"]} --reason "..." --config {where}',
    ]
    assert "parked: paused" in seen["attention"]
    assert seen["march"] == {"name": "march.xlsx", "badge": "imported"}
    assert seen["hostile"] == {"name": HOSTILE, "badge": "rejected"}  # shown as text
    assert seen["scripts"] == 0
    assert seen["alert"] is None
    assert "ok" in seen["routes"]
    written = world.settled("rejected", f"{HOSTILE}.result.txt").read_text()
    assert seen["receipt"] == written.strip()
    assert "REJECTED: nothing from this file was imported" in seen["receipt"]
    assert seen["phone_overflow"] == 0

    # The command on the page is the one to run: pasted (with a reason), it works.
    [unpark] = [c for c in seen["commands"] if " unpark " in c]
    words = shlex.split(unpark.replace('"..."', '"paused by mistake"'))
    code, output = await cli(*words[1:])
    assert code == 0, output
    assert in_state(world, "hold me.xlsx", FileState.tracking)()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/") as page,
    ):
        html = await page.text()
    in_flight = html[html.index('id="in-flight"') : html.index('id="settled"')]
    assert ids["parked"] in in_flight  # back in flight, with its state
    assert "state-tracking" in in_flight


async def test_the_page_and_the_receipts_are_served_safely(
    make_world, run_daemon, emulator, upload
):
    port = free_port()
    world = make_world(control_listen=f"127.0.0.1:{port}")
    await run_daemon(world)
    await upload(world.inbox / "a.xlsx", xlsxwriter_bytes(rows_valid(3, seed=5)))
    await wait_for(world.settled("done", "a.xlsx.result.txt").exists, 30, "a done")
    row = row_named(world, "a.xlsx")
    assert row is not None
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as page:
            assert page.status == 200
            assert page.headers["Content-Type"] == "text/html; charset=utf-8"
            policy = page.headers["Content-Security-Policy"]
            html = await page.text()
        async with http.get(f"{base}/receipts/{row.id}") as receipt:
            assert receipt.status == 200
            assert receipt.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert receipt.headers["X-Content-Type-Options"] == "nosniff"
            text = await receipt.text()
        for path in (
            "/receipts/..%2F..%2Fetc%2Fpasswd",
            "/receipts/20990101-000000-abcdef",
            f"/receipts/{row.id}%00",
        ):
            async with http.get(base + path) as missing:
                assert missing.status == 404, path
                assert missing.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in policy
    assert "script-src" not in policy  # default-src 'none' forbids every script
    assert '<meta http-equiv="refresh"' in html
    assert "<script" not in html
    assert text == world.settled("done", "a.xlsx.result.txt").read_text()
    assert SECRET_KEY not in html
    assert ACCESS_KEY not in html
