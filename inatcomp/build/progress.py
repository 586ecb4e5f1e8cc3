"""Progress of a long phase a person can follow: a bar redrawn on a terminal, a log line every few seconds otherwise.

The counters are updated by many threads (the photo fetcher's workers) under one lock; the display is drawn
by the thread that waits for them, so a slow terminal never holds a worker.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress"]

_logger = logging.getLogger(__name__)

#: Seconds between log lines when the output is not a terminal (a log file, CI).
LOG_EVERY = 5.0
#: Seconds between redraws of the bar on a terminal.
DRAW_EVERY = 0.2
_BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


class Progress:
    """Photos done out of those to do, rate, bytes, retries, failures and the time left.

    Args:
        what: What is counted, e.g. "fetch".
        total: How many items there are to do.
        stream: Where the bar is drawn (default standard error); a bar only when it is a terminal.
    """

    def __init__(self, what: str, total: int, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.bytes = 0
        self.retries = 0
        self.failures = 0
        self.lock = threading.Lock()
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_shown = self.start

    def add(self, *, done: int = 0, size: int = 0, retries: int = 0, failures: int = 0) -> None:
        """Count finished items, bytes received, retries and permanent failures (thread-safe)."""
        with self.lock:
            self.done += done
            self.bytes += size
            self.retries += retries
            self.failures += failures

    def line(self) -> str:
        """The state in one line: done/total, rate, bytes, retries, failures, time left."""
        with self.lock:
            done, size, retries, failures = self.done, self.bytes, self.retries, self.failures
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        left = _clock(eta) if eta == eta else "?"
        return (
            f"{self.what} {done:,}/{self.total:,} ({rate:,.0f}/s, {_megabytes(size)}, "
            f"{retries:,} retries, {failures:,} failed, ETA {left})"
        )

    def show(self, *, final: bool = False) -> None:
        """Redraw the bar, or log a line when :data:`LOG_EVERY` seconds have passed (always when ``final``)."""
        now = time.perf_counter()
        every = DRAW_EVERY if self.terminal else LOG_EVERY
        if not final and now - self.last_shown < every:
            return
        self.last_shown = now
        if not self.terminal:
            _logger.info("%s", self.line())
            return
        filled = int(_BAR_WIDTH * self.done / self.total) if self.total else _BAR_WIDTH
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.line()}" + ("\n" if final else ""))
        self.stream.flush()
