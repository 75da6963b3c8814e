"""The model-family matrix, run and written down: tests/test_families.py under pytest, its outcome per family and
stage turned into README's "Model families" table (✓, or the reason it failed) and its wall time per family into
BENCHMARKS.md. The table is never typed by hand: rerun this after a change to a family or a stage.

    .venv/bin/python bench/family_matrix.py            # run the matrix, print the table and timings
    .venv/bin/python bench/family_matrix.py --write    # ... and write them into README.md and BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from families import FAMILIES, README_END, README_START, STAGES  # noqa: E402

BENCH_START, BENCH_END = "<!-- family-matrix-timings:start -->", "<!-- family-matrix-timings:end -->"


def run_matrix() -> tuple[dict, float]:
    """{(family, stage test): (outcome cell, seconds)} from one pytest run, and the run's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "matrix.xml"
        began = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_families.py",
                f"--junitxml={report}",
            ],
            cwd=ROOT,
            check=False,
        )
        wall = time.time() - began
        results = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            match = re.fullmatch(r"(test_\w+)\[(\w+)\]", case.get("name", ""))
            if not match or match.group(1) not in STAGES:
                continue
            problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            if problem is None:
                cell = "✓"
            else:
                reason = (problem.get("message") or problem.tag).splitlines()[0].replace("|", "/")[:90]
                cell = ("skipped: " if problem.tag == "skipped" else "✗ ") + reason
            results[match.group(2), match.group(1)] = (cell, float(case.get("time", 0)))
    return results, wall


def table(results: dict) -> list[str]:
    lines = ["| family | " + " | ".join(STAGES.values()) + " |", "|---|" + "---|" * len(STAGES)]
    for family in FAMILIES:
        lines.append(
            f"| {family} | " + " | ".join(results.get((family, test), ("not run", 0))[0] for test in STAGES) + " |"
        )
    return lines


def timings(results: dict, wall: float) -> list[str]:
    per_family = defaultdict(float)
    for (family, _), (_, seconds) in results.items():
        per_family[family] += seconds
    lines = [
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; {datetime.date.today()}. Whole matrix "
        f"(tests/test_families.py, tiny checkpoints built from each family's config): {wall:.0f} s wall.",
        "",
        "| family | seconds (its seven stage tests, fixtures included) |",
        "|---|---:|",
    ]
    lines += [f"| {family} | {per_family[family]:.1f} |" for family in FAMILIES]
    return lines


def replace_between(path: Path, start: str, end: str, lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{path.name}: markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into README.md and BENCHMARKS.md")
    args = parser.parse_args()
    results, wall = run_matrix()
    print("\n".join(table(results)), "\n", "\n".join(timings(results, wall)), sep="\n")
    if args.write:
        replace_between(ROOT / "README.md", README_START, README_END, table(results))
        replace_between(ROOT / "BENCHMARKS.md", BENCH_START, BENCH_END, timings(results, wall))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
