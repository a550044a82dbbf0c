"""Validation speed and memory on 500,000-row lists: ours against openpyxl and python-calamine.

Usage:
    python bench/validate.py [--rows 500000] [--runs 3] [--data /tmp/isales-bench] [--skip-openpyxl]

It writes two deterministic files (shared strings, and inline strings), then runs each contender
in its own subprocess, several times, in the same run, and prints the median wall time, the peak
RSS of the process and the ratios. Every contender feeds its rows to the same rule checker, so
the difference is the reading. "ours" runs as the daemon runs it: in a process pool beside an
asyncio event loop whose worst lag is reported.
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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HEADER = ["sessionId", "called", "caller", "callData", "customField", "recycleTime", "priority"]
NAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
CITIES = ["上海市浦东新区", "北京市朝阳区", "广州市天河区", "深圳市南山区", "杭州市西湖区"]


def _row(rnd: random.Random, index: int) -> list[object]:
    mobile = f"1{rnd.choice('3456789')}{rnd.randrange(10**9):09d}"
    pick = rnd.random()
    if pick < 0.85:
        called = f'[{{"calledNo":"{mobile}","delayTime":"0","type":"1"}}]'
    elif pick < 0.95:
        called = (
            f'[{{"calledNo":"{mobile}","delayTime":"0","type":"1"}},'
            f'{{"calledNo":"1{rnd.randrange(10**10):010d}","delayTime":"60","type":"1"}}]'
        )
    else:
        called = f"[{{'calledNo':{mobile}}}]"  # the official template's own form
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


def generate(folder: Path, rows: int) -> dict[str, Path]:
    import xlsxwriter

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, options in (("sst", {}), ("inline", {"constant_memory": True})):
        path = folder / f"calls_{rows}_{kind}.xlsx"
        files[kind] = path
        if path.exists():
            continue
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        rnd = random.Random(20261123)
        temporary = path.with_suffix(".tmp")
        book = xlsxwriter.Workbook(str(temporary), options)
        sheet = book.add_worksheet("calls")
        sheet.write_row(0, 0, HEADER)
        for index in range(rows):
            sheet.write_row(index + 1, 0, _row(rnd, index))
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


async def _ours_in_the_daemon(path: str) -> dict[str, Any]:
    import multiprocessing

    from watcher.validate import validate_file

    loop = asyncio.get_running_loop()
    worst_lag_s = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst_lag_s
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            worst_lag_s = max(worst_lag_s, loop.time() - before - 0.01)

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    await loop.run_in_executor(pool, os.getpid)  # start the worker before timing
    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    report = await loop.run_in_executor(pool, validate_file, path)
    elapsed_s = time.perf_counter() - started
    worker_rss_mb = await loop.run_in_executor(pool, _peak_rss_mb, True)
    done.set()
    await tick
    pool.shutdown()
    return {
        "rows": report.data_rows,
        "errors": report.error_count,
        "elapsed_s": elapsed_s,
        "worst_lag_ms": worst_lag_s * 1000,
        "worker_peak_mb": worker_rss_mb,
    }


def _ours(path: str) -> dict[str, Any]:
    return asyncio.run(_ours_in_the_daemon(path))


def _peak_rss_mb(with_forks: bool = False) -> float:
    """The peak RSS of this process, and of the processes it forked (the second half's checker).

    VmHWM, not ru_maxrss, for this process: ru_maxrss survives exec and would report the size of
    the parent. A forked child really starts with its parent's pages, so ru_maxrss is right there.
    """
    import resource

    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    peak = int(line.split()[1]) / 1024
    if with_forks:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return peak


CONTENDERS = {"ours": _ours, "calamine": _calamine, "openpyxl": _openpyxl}


def run_one(name: str, path: Path) -> dict[str, Any]:
    """Run a contender in a fresh process: wall time from the outside, peak RSS from inside."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--contender", name, str(path)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = process.stdout.read()
    process.wait()
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{name} failed on {path}")
    result = json.loads(output)
    # For "ours" the validation runs in a pool worker: count the largest process, not the sum.
    peak_mb = max(result["self_peak_mb"], result.get("worker_peak_mb", 0.0))
    return {**result, "wall_s": wall_s, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/tmp/isales-bench"))
    parser.add_argument("--skip-openpyxl", action="store_true", help="openpyxl takes ~25 s a run")
    parser.add_argument("--contender", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        name, path = args.contender
        result = CONTENDERS[name](path)
        result["self_peak_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return
    files = generate(args.data, args.rows)
    names = [n for n in CONTENDERS if not (n == "openpyxl" and args.skip_openpyxl)]
    print(f"# {args.rows:,} rows, {args.runs} runs each, median; {os.cpu_count()} cores")
    for kind, path in files.items():
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(args.runs):
            for name in names:  # interleaved, so that noise hits every contender alike
                results[name].append(run_one(name, path))
        medians = {}
        for name in names:
            runs = results[name]
            wall = statistics.median(r["wall_s"] for r in runs)
            peak = statistics.median(r["peak_mb"] for r in runs)
            medians[name] = wall
            extra = ""
            if name == "ours":
                lag = max(r["worst_lag_ms"] for r in runs)
                extra = f"  worst event-loop lag {lag:.1f} ms"
            errors = sorted({r["errors"] for r in runs})
            fastest = min(r["wall_s"] for r in runs)
            print(
                f"{kind:<7} {name:<9} wall {wall:6.2f} s  (min {fastest:.2f})"
                f"  peak RSS {peak:6.0f} MB  rows {runs[0]['rows']:,}  errors {errors}{extra}"
            )
        ratios = "  ".join(
            f"ours/{n} {medians['ours'] / medians[n]:.2f}x" for n in names if n != "ours"
        )
        print(f"{kind:<7} ratios    {ratios}")


if __name__ == "__main__":
    main()
