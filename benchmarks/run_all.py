"""Run every benchmark script and rewrite BENCHMARKS.md with the figures."""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import platform
from pathlib import Path

_logger = logging.getLogger(__name__)

#: Benchmark modules in the order they run.
BENCHMARKS = (
    "benchmarks.synth",
    "benchmarks.build",
    "benchmarks.loader",
    "benchmarks.train_step",
    "benchmarks.score",
    "benchmarks.tta",
)


def main() -> None:
    """Run the benchmarks; with ``--write PATH`` rewrite that Markdown file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", help="Markdown file to rewrite (BENCHMARKS.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    rows = []
    for name in BENCHMARKS:
        for result in importlib.import_module(name).run(quick=args.quick):
            result.log()
            rows.append((name, result))
    if args.write:
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        lines = [
            "# Benchmarks",
            "",
            "Written by `make bench` (`python -m benchmarks.run_all --write BENCHMARKS.md`); do not edit by hand.",
            "",
            f"Machine: {machine}. Date: {datetime.date.today().isoformat()}.{' Quick sizes.' if args.quick else ''}",
            "",
            "| script | goal | figure | ratio | met |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| `{n}` | {r.goal} | {r.figure} | {r.ratio:.2f} | {'yes' if r.met else 'no'} |" for n, r in rows]
        Path(args.write).write_text("\n".join(lines) + "\n", encoding="utf-8")
        _logger.info("wrote %s", args.write)


if __name__ == "__main__":
    main()
