"""What every benchmark script returns and prints."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    """One measured goal.

    Attributes:
        goal: The goal in words, e.g. "metadata for 1,000,000 photos in under 30 s".
        figure: What was measured, in words with units.
        ratio: Measured over the goal's bound (≤ 1 meets an upper bound), or a speed-up against the
            baseline run side by side (≥ the stated factor meets it).
        met: Whether the goal is met.
    """

    goal: str
    figure: str
    ratio: float
    met: bool

    def log(self) -> None:
        """Log the result in one line."""
        _logger.info("%s | %s | ratio %.2f | %s", self.goal, self.figure, self.ratio, "met" if self.met else "NOT met")


def run_script(run: Callable[..., list[Result]], description: str | None) -> None:
    """The command line of a benchmark script: ``--quick``, then log each result."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    for result in run(quick=args.quick):
        result.log()


def cpu_seconds(since: dict[str, float] | None = None) -> dict[str, float]:
    """This process's CPU seconds, all threads: ``cpu`` (user + system), ``user`` and ``sys``, counted from
    ``since`` (an earlier return of this function) or from the start."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    since = since or {"user": 0.0, "sys": 0.0}
    # The sum is formed from the two differences, so sys <= cpu holds exactly (no float rounding between them).
    user, system = usage.ru_utime - since["user"], usage.ru_stime - since["sys"]
    return {"cpu": user + system, "user": user, "sys": system}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB, from ``VmHWM`` in ``/proc/self/status``.

    ``ru_maxrss`` is not used: on Linux it survives ``exec``, so a child started by a big parent reports the
    parent's size as its floor.
    """
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_and_write(args: Any, *, name: str, run: Callable[..., Any], markdown: Callable[..., str],
                  write_markdown: Callable[[str, str], Any]) -> Any:  # fmt: skip
    """The main of a benchmark that writes a Markdown block: run, log the block, rewrite each ``--write`` file.

    Args:
        args: Parsed ``--quick``, ``--seeds``, ``--out`` and ``--write`` (a list of files).
        name: The default output folder's name (``runs/NAME`` or ``runs/NAME-quick``).
        run: ``run(quick=, seeds=, out=)`` returning the rows; it writes ``out/facts.json``.
        markdown: ``markdown(rows, facts=, seconds=)`` giving the block.
        write_markdown: ``write_markdown(path, text)`` replacing the block in a file.

    Returns:
        The rows.
    """
    import time
    from pathlib import Path

    from inatcomp.fileio import read_json

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        logging.getLogger("inatcomp").setLevel(logging.WARNING)
    start = time.perf_counter()
    out = Path(args.out or (f"runs/{name}-quick" if args.quick else f"runs/{name}"))
    rows = run(quick=args.quick, seeds=args.seeds, out=out)
    text = markdown(rows, facts=read_json(out / "facts.json"), seconds=time.perf_counter() - start)
    _logger.info("\n%s", text)
    for path in args.write:
        _logger.info("wrote %s", write_markdown(path, text))
    return rows
