"""Validation speed and memory on 500,000-row lists: ours against openpyxl and python-calamine.

Usage:
    python bench/validate.py [--rows 500000] [--runs 3] [--case hard|kind|both]
                             [--data /tmp/isales-bench] [--skip-openpyxl]

Two cases, each as two deterministic files (shared strings, and inline strings):

- ``kind``: repeated strings in most columns, 1.2 % of rows invalid in four ways.
- ``hard``: every text cell unique (about 3 million shared strings at 500,000 rows), 1 % of
  rows invalid in twelve ways; what a real list of distinct customers looks like.

Each contender runs in its own subprocess, several times, interleaved, in the same run. The
median wall time is taken from outside, and the memory is the peak, over samples every 0.1 s,
of the sum of PSS (``/proc/<pid>/smaps_rollup``) over the whole process tree: pool workers,
forkservers and the forks of a split sheet included, shared pages counted once. Every contender
feeds its rows to the same rule checker, so the difference is the reading. "ours" runs as the
daemon runs it: in the daemon's validation pool (its forkserver, a checker per file and the
checker's fork), beside an asyncio event loop whose worst lag is reported; its line also gives
the checkers' PSS, the pool's processes without the harness that stands for the daemon.
"cal-read" is python-calamine reading every row and checking nothing: the floor of any
validator built on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

HEADER = ["sessionId", "called", "caller", "callData", "customField", "recycleTime", "priority"]
NAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
CITIES = ["上海市浦东新区", "北京市朝阳区", "广州市天河区", "深圳市南山区", "杭州市西湖区"]


def _called(pick: float, mobile: str, second: Callable[[], str]) -> str:
    """One number mostly, two now and then, and now and then the official template's form."""
    if pick < 0.85:
        return f'[{{"calledNo":"{mobile}","delayTime":"0","type":"1"}}]'
    if pick < 0.95:
        return (
            f'[{{"calledNo":"{mobile}","delayTime":"0","type":"1"}},'
            f'{{"calledNo":"{second()}","delayTime":"60","type":"1"}}]'
        )
    return f"[{{'calledNo':{mobile}}}]"


def _row(rnd: random.Random, index: int) -> list[object]:
    mobile = f"1{rnd.choice('3456789')}{rnd.randrange(10**9):09d}"
    called = _called(rnd.random(), mobile, lambda: f"1{rnd.randrange(10**10):010d}")
    call_data = json.dumps(
        {
            "name": rnd.choice(NAMES) + rnd.choice(NAMES),
            "orderId": f"ORD{rnd.randrange(10**12):012d}",
            "amount": f"{rnd.random() * 50000:.2f}",
            "address": f"{rnd.choice(CITIES)}{rnd.randint(1, 999)}号{rnd.randint(101, 2999)}室",
            "remark": "客户要求下午致电。" * rnd.randint(0, 6),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    row: list[object] = [
        f"{rnd.getrandbits(128):032x}",
        called,
        f"021{rnd.randrange(10**8):08d}",
        call_data,
        f"batch|agent={rnd.randint(1, 300):03d}",
        f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d} {rnd.randint(8, 20):02d}:30:00",
        rnd.randint(1, 5),
    ]
    if index % 83 == 0:  # about 1.2 % of rows carry one error each
        broken = index // 83 % 4
        if broken == 0:
            row[1] = '[{"calledNo":"1380013800a"}]'
        elif broken == 1:
            row[5] = "2026-02-30 10:00:00"
        elif broken == 2:
            row[2] = "9" * 25
        else:
            row[6] = "high"
    return row


def _hard_row(rnd: random.Random, index: int) -> list[object]:
    """A row whose every text cell differs from every other row's (the index is in each)."""
    # Multiplying by a number prime to 10**9 permutes the 9-digit range: numbers never repeat.
    mobile = f"1{'3456789'[index % 7]}{index * 7_368_787 % 10**9:09d}"
    called = _called(rnd.random(), mobile, lambda: f"2{index:010d}")
    call_data: dict[str, str] = {
        "name": rnd.choice(NAMES) + rnd.choice(NAMES),
        "orderId": f"ORD{index:09d}{rnd.randrange(1000):03d}",
        "amount": f"{rnd.random() * 50000:.2f}",
        "address": f"{rnd.choice(CITIES)}{rnd.randint(1, 999)}号{rnd.randint(101, 2999)}室",
    }
    if rnd.random() < 0.3:
        call_data["remark"] = "客户要求下午致电。" * rnd.randint(1, 4)
    recycle = datetime(2026, 1, 1, 8) + timedelta(seconds=61 * index)  # noqa: DTZ001
    return [
        f"{index:08x}{rnd.getrandbits(96):024x}",
        called,
        f"021{index * 7_919 % 10**8:08d}",
        json.dumps(call_data, ensure_ascii=False, separators=(",", ":")),
        f"batch-{index:07d}|agent={rnd.randint(1, 300):03d}",
        recycle.strftime("%Y-%m-%d %H:%M:%S"),
        rnd.randint(1, 5),
    ]


# Twelve ways to break a row of the hard case, each a different kind of problem.
_BREAKERS: tuple[tuple[int, object], ...] = (
    (1, '[{"calledNo":"1380013800a","delayTime":"0","type":"1"}]'),
    (1, '[{"calledNo":"%s","delayTime":"0","type":"1"}]' % ("1" * 25)),
    (1, '[{"calledNo":"13912345678","delayTime":"9000","type":"1"}]'),
    (1, '[{"calledNo":"13912345678","delayTime":"0","type":"1"'),
    (1, ""),
    (0, "f" * 40),
    (2, "0" * 25),
    (3, json.dumps({"blob": "数据" * 520}, ensure_ascii=False)),
    (4, "x" * 201),
    (5, "2026/02/15 10:00"),
    (5, "2026-02-30 10:00:00"),
    (6, "high"),
)


def _broken_hard_row(rnd: random.Random, index: int) -> list[object]:
    row = _hard_row(rnd, index)
    if index % 100 == 37:  # 1 % of rows, each broken in one of twelve ways
        column, value = _BREAKERS[index // 100 % len(_BREAKERS)]
        row[column] = f"{value}{index}" if column in (0, 2, 4) else value  # still unique
    return row


def generate(folder: Path, rows: int, cases: list[str]) -> dict[str, Path]:
    import xlsxwriter

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    makers = {"kind": _row, "hard": _broken_hard_row}
    for case in cases:
        for kind, options in (("sst", {}), ("inline", {"constant_memory": True})):
            stem = f"calls_{rows}_{kind}" if case == "kind" else f"calls_{rows}_{case}_{kind}"
            path = folder / f"{stem}.xlsx"
            files[f"{case}/{kind}"] = path
            if path.exists():
                continue
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            rnd = random.Random(20261123)
            temporary = path.with_suffix(".tmp")
            book = xlsxwriter.Workbook(
                str(temporary), {**options, "strings_to_numbers": False, "strings_to_urls": False}
            )
            sheet = book.add_worksheet("calls")
            sheet.write_row(0, 0, HEADER)
            make = makers[case]
            for index in range(rows):
                sheet.write_row(index + 1, 0, make(rnd, index))
            book.close()
            temporary.rename(path)
    return files


# -- contenders (each runs in its own process) -------------------------------------------------


def _check(rows: Iterator[tuple[int, list[Any]]], sheet: str) -> dict[str, Any]:
    from watcher.validate import Report, ValidationOptions
    from watcher.validate.workbook import check_rows

    report = Report()
    check_rows(rows, report, ValidationOptions(), sheet_name=sheet)
    return {"rows": report.data_rows, "errors": report.error_count}


def _openpyxl(path: str) -> dict[str, Any]:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    sheet = book.worksheets[0]
    sheet.reset_dimensions()
    rows = ((n, list(values)) for n, values in enumerate(sheet.iter_rows(values_only=True), 1))
    return _check(rows, sheet.title)


def _calamine(path: str) -> dict[str, Any]:
    from python_calamine import CalamineWorkbook

    sheet = CalamineWorkbook.from_path(path).get_sheet_by_index(0)
    start = sheet.start[0] if sheet.start else 0
    rows = ((start + n, values) for n, values in enumerate(sheet.iter_rows(), 1))
    return _check(rows, "calls")


def _calamine_read_only(path: str) -> dict[str, Any]:
    """python-calamine reading every row, and nothing else: the floor of any check built on it."""
    from python_calamine import CalamineWorkbook

    sheet = CalamineWorkbook.from_path(path).get_sheet_by_index(0)
    rows = sum(1 for _ in sheet.iter_rows()) - 1  # the header
    return {"rows": rows, "errors": None}


async def _ours_in_the_daemon(path: str) -> dict[str, Any]:
    """The daemon's own pool (its forkserver, a checker per file, the checker's fork), as the
    daemon starts it."""
    from watcher.validate import ValidationOptions
    from watcher.validate.pool import CheckLimits, ValidationPool

    loop = asyncio.get_running_loop()
    worst_lag_s = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst_lag_s
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            worst_lag_s = max(worst_lag_s, loop.time() - before - 0.01)

    # validation.max_seconds and max_memory_mb as the daemon has them by default (the harness
    # stays as light as it can: it stands for the daemon, whose own memory is not measured here)
    pool = ValidationPool(1, CheckLimits(300.0, 2048))
    await pool.warm_up()  # the forkserver starts before timing, as the daemon's before READY
    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    report = await pool.validate(path, ValidationOptions())
    elapsed_s = time.perf_counter() - started
    done.set()
    await tick
    pool.shutdown()
    return {
        "rows": report.data_rows,
        "errors": report.error_count,
        "elapsed_s": elapsed_s,
        "worst_lag_ms": worst_lag_s * 1000,
    }


def _ours(path: str) -> dict[str, Any]:
    return asyncio.run(_ours_in_the_daemon(path))


CONTENDERS = {
    "ours": _ours,
    "calamine": _calamine,
    "cal-read": _calamine_read_only,
    "openpyxl": _openpyxl,
}


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_pss_mb(root: int) -> tuple[float, float]:
    """The sum of PSS over ``root`` and all its descendants, and over the descendants alone
    (for ours: the daemon's checkers, beside the harness that stands for the daemon), in MB."""
    children = _children()
    total_kb = below_kb = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                pss_kb = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile, or a zombie
        total_kb += pss_kb
        below_kb += pss_kb if pid != root else 0
    return total_kb / 1024, below_kb / 1024


def run_one(name: str, path: Path) -> dict[str, Any]:
    """Run a contender in a fresh process: wall time from the outside, and the peak of its
    process tree's PSS sampled every 0.1 s."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--contender", name, str(path)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    peak_pss_mb = peak_children_mb = 0.0
    while process.poll() is None:
        tree_mb, children_mb = tree_pss_mb(process.pid)
        peak_pss_mb, peak_children_mb = (
            max(peak_pss_mb, tree_mb),
            max(peak_children_mb, children_mb),
        )
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed on {path}")
    result = json.loads(output)
    return {**result, "wall_s": wall_s, "pss_mb": peak_pss_mb, "children_mb": peak_children_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", choices=("hard", "kind", "both"), default="both")
    parser.add_argument("--data", type=Path, default=Path("/tmp/isales-bench"))
    parser.add_argument("--skip-openpyxl", action="store_true", help="openpyxl takes ~25 s a run")
    parser.add_argument("--contender", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        name, path = args.contender
        result = CONTENDERS[name](path)
        print(json.dumps(result))
        return
    cases = ["hard", "kind"] if args.case == "both" else [args.case]
    files = generate(args.data, args.rows, cases)
    names = [n for n in CONTENDERS if not (n == "openpyxl" and args.skip_openpyxl)]
    print(f"# {args.rows:,} rows, {args.runs} runs each, median; {os.cpu_count()} cores")
    for kind, path in files.items():
        with zipfile.ZipFile(path) as archive:
            sizes = {i.filename: i.file_size for i in archive.infolist()}
        strings_mb = sizes.get("xl/sharedStrings.xml", 0) / 1e6
        print(
            f"# {kind}: {path.name}, {path.stat().st_size / 1e6:.0f} MB, sheet XML "
            f"{sizes['xl/worksheets/sheet1.xml'] / 1e6:.0f} MB, sharedStrings {strings_mb:.0f} MB",
            flush=True,
        )
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(args.runs):
            for name in names:  # interleaved, so that noise hits every contender alike
                results[name].append(run_one(name, path))
        medians = {}
        for name in names:
            runs = results[name]
            wall = statistics.median(r["wall_s"] for r in runs)
            pss = statistics.median(r["pss_mb"] for r in runs)
            medians[name] = wall
            extra = ""
            if name == "ours":
                lag = max(r["worst_lag_ms"] for r in runs)
                checkers = statistics.median(r["children_mb"] for r in runs)
                extra = f"  worst event-loop lag {lag:.1f} ms  checkers' PSS {checkers:.0f} MB"
            errors = sorted({r["errors"] for r in runs})
            fastest = min(r["wall_s"] for r in runs)
            print(
                f"{kind:<11} {name:<9} wall {wall:6.2f} s  (min {fastest:.2f})"
                f"  tree PSS {pss:5.0f} MB  rows {runs[0]['rows']:,}  errors {errors}{extra}"
            )
        ratios = "  ".join(
            f"ours/{n} {medians['ours'] / medians[n]:.2f}x" for n in names if n != "ours"
        )
        print(f"{kind:<11} ratios    {ratios}", flush=True)


if __name__ == "__main__":
    main()
