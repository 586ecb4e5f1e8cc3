"""Run every benchmark script and rewrite BENCHMARKS.md with the figures."""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import platform
from pathlib import Path

from inatcomp.fileio import write_atomic

_logger = logging.getLogger(__name__)

#: Benchmark modules in the order they run.
BENCHMARKS = (
    "benchmarks.synth",
    "benchmarks.build",
    "benchmarks.fetch",
    "benchmarks.loader",
    "benchmarks.train_step",
    "benchmarks.score",
    "benchmarks.tta",
    "benchmarks.progressive",
    "benchmarks.world",
    "benchmarks.gpu",  # no rows without CUDA
)


def main() -> None:
    """Run the benchmarks; with ``--write PATH`` rewrite that Markdown file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", help="Markdown file to rewrite (BENCHMARKS.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="MODULE",
        help="run only these scripts; with --write their rows are replaced and the others' rows kept",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    rows = []
    for name in args.only or BENCHMARKS:
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
        chosen = args.only or BENCHMARKS
        fresh: dict[str, list[str]] = {n: [] for n in BENCHMARKS}
        for n, r in rows:
            fresh[n].append(f"| `{n}` | {r.goal} | {r.figure} | {r.ratio:.2f} | {'yes' if r.met else 'no'} |")
        kept = _rows_of(Path(args.write)) if args.only else {}
        for n in BENCHMARKS:
            lines += fresh[n] if n in chosen else kept.get(n, [])
        if args.only:
            lines += ["", f"Measured on this date: {', '.join(f'`{n}`' for n in chosen)}; other rows kept from before."]
        write_atomic(args.write, "\n".join(lines) + "\n" + _sections_of(Path(args.write)))
        _logger.info("wrote %s", args.write)


def _sections_of(path: Path) -> str:
    """The sections after the table of an existing BENCHMARKS.md (blocks other scripts write, e.g. build-scale),
    kept as they are."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    at = text.find("\n## ")
    return text[at:] if at >= 0 else ""


def _rows_of(path: Path) -> dict[str, list[str]]:
    """The table rows of an existing BENCHMARKS.md, by script."""
    rows: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("| `benchmarks."):
                rows.setdefault(line.split("`")[1], []).append(line)
    return rows


if __name__ == "__main__":
    main()
