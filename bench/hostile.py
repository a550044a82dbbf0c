"""What each hostile workbook costs: ``isales-watcher validate`` on every corpus file.

For each file of ``tests/corpus.py`` (ZIP and XML bombs, cells beyond the grid, unsafe member
names, 500,001 rows...) it runs the real command and records its verdict, its wall time and the
peak memory of its whole process tree (the sum of PSS over the command, its checker and the
checker's fork, sampled every 20 ms from /proc). Baselines in the same run: a valid 5-row list
and a valid 100,000-row list.

    python bench/hostile.py [--only NAME ...] [--rows 100000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus import CASES
from tests.workbooks import rows_valid, xlsxwriter_bytes


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return found


def _tree_pss_kb(root: int) -> int:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in rollup.splitlines() if x.startswith("Pss:")), 0)
        todo.extend(_children(pid))
    return total


def measure(path: Path) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak tree PSS in MB, the first problem line) of one validate run."""
    command = [sys.executable, "-m", "watcher", "validate", str(path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_pss_kb(process.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    lines = [line.strip() for line in output.splitlines()[1:] if line.strip()]
    return process.returncode, elapsed, peak / 1024, (lines[0] if lines else output.strip())[:90]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="corpus names to run")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the large baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files: list[tuple[str, Path]] = []
        for name, data in (
            ("baseline_5_rows", xlsxwriter_bytes(rows_valid(5))),
            (f"baseline_{args.rows}_rows", xlsxwriter_bytes(rows_valid(args.rows, seed=7))),
        ):
            files.append((name, Path(folder) / f"{name}.xlsx"))
            files[-1][1].write_bytes(data)
        for name, make, _ in CASES:
            if args.only and name not in args.only:
                continue
            path = Path(folder) / f"{name}.xlsx"
            path.write_bytes(make())
            files.append((name, path))
        print(f"{'file':32} {'bytes':>10} {'exit':>4} {'seconds':>8} {'tree PSS MB':>11}  verdict")
        worst_mb = worst_s = (0.0, "")
        for name, path in files:
            code, seconds, peak_mb, verdict = measure(path)
            size = path.stat().st_size
            print(f"{name:32} {size:>10,} {code:>4} {seconds:>8.2f} {peak_mb:>11.1f}  {verdict}")
            if not name.startswith("baseline"):
                worst_mb = max(worst_mb, (peak_mb, name))
                worst_s = max(worst_s, (seconds, name))
        print(
            f"worst memory: {worst_mb[1]} {worst_mb[0]:.1f} MB; worst time: {worst_s[1]} "
            f"{worst_s[0]:.2f} s"
        )


if __name__ == "__main__":
    main()
