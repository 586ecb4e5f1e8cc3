"""The ledger of photos gone for good, beside the photo cache: a rerun does not ask the server for them again.

``{cache}/fetch_failures.tsv``, one tab-separated line per photo and size (photo id, size, url, status,
attempts, reason), appended as the fetcher gives photos up (:mod:`inatcomp.build.fetch`) and rewritten whole,
atomically, when ``--retry-failed`` fetches some after all. A line cut by ``kill -9`` is skipped when read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LEDGER_NAME", "FailureLedger"]

_logger = logging.getLogger(__name__)

#: The ledger's file name, in the cache folder.
LEDGER_NAME = "fetch_failures.tsv"
LEDGER_COLUMNS = ("photo_id", "size", "url", "status", "attempts", "reason")


class FailureLedger:
    """The permanent failures beside the cache: appended line by line, read back tolerating a cut last line.

    Args:
        cache: The photo cache folder the ledger sits in.
    """

    def __init__(self, cache: Path) -> None:
        self.path = cache / LEDGER_NAME
        self.lock = threading.Lock()
        self.entries: dict[tuple[int, str], dict[str, str]] = {}
        # A last line without its end (a kill mid-write): the next line appended starts on a line of its own,
        # else the two would read back as one malformed line and the new one would be lost.
        self.cut = False
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    self.cut = not line.endswith("\n")
                    fields = line.rstrip("\n").split("\t")
                    if number == 1 or len(fields) != len(LEDGER_COLUMNS) or not line.endswith("\n"):
                        continue  # the header, or a line cut by a kill
                    row = dict(zip(LEDGER_COLUMNS, fields))
                    try:
                        self.entries[(int(row["photo_id"]), row["size"])] = row
                    except ValueError:
                        _logger.warning("%s:%d: not a photo id, line skipped", self.path, number)

    def gone(self, size: str) -> set[int]:
        """Photo ids listed as gone at ``size``."""
        return {photo_id for photo_id, s in self.entries if s == size}

    def add(self, photo_id: int, size: str, url: str, status: str, attempts: int, reason: str) -> None:
        """Append a permanent failure (thread-safe); a line of its own even after a line cut by a kill."""
        row = {"photo_id": str(photo_id), "size": size, "url": url, "status": status,
               "attempts": str(attempts), "reason": reason.replace("\t", " ").replace("\n", " ")}  # fmt: skip
        with self.lock:
            self.entries[(photo_id, size)] = row
            new = not self.path.is_file()
            with open(self.path, "a", encoding="utf-8") as handle:
                if new:
                    handle.write("\t".join(LEDGER_COLUMNS) + "\n")
                elif self.cut:
                    handle.write("\n")
                self.cut = False
                handle.write("\t".join(row[c] for c in LEDGER_COLUMNS) + "\n")

    def forget(self, photo_ids: Sequence[int], size: str) -> None:
        """Remove photos fetched after all (``retry_failed``): the ledger is rewritten whole, atomically."""
        with self.lock:
            if not any((p, size) in self.entries for p in photo_ids):
                return
            for photo_id in photo_ids:
                self.entries.pop((photo_id, size), None)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write("\t".join(LEDGER_COLUMNS) + "\n")
                for row in self.entries.values():
                    handle.write("\t".join(row[c] for c in LEDGER_COLUMNS) + "\n")
            os.replace(tmp, self.path)
            self.cut = False
