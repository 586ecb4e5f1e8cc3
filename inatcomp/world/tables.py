"""Writing the tables of a synthetic export: tab-separated with a header, optionally gzipped, atomically."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pandas as pd

__all__ = ["EXPORT_TABLES", "TableAppender", "write_table"]

#: The four export tables, in the order they are written.
EXPORT_TABLES = ("taxa", "observations", "photos", "observers")


_TEXT_KWARGS = {"sep": "\t", "index": False, "quoting": csv.QUOTE_NONE, "lineterminator": "\n", "float_format": "%.10g"}


class TableAppender:
    """A tab-separated table written block by block into a temporary file, renamed into place by :meth:`close`.

    The header comes with the first block; a gzipped table is one gzip stream without a timestamp, so the
    bytes depend only on the blocks.
    """

    def __init__(self, path: Path, *, compress: bool) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.raw = open(self.tmp, "wb")  # noqa: SIM115  (closed by close or abort)
        self.handle = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0, compresslevel=6) if compress else None
        )
        self.header = True

    def append(self, frame: pd.DataFrame) -> None:
        frame.to_csv(self.handle or self.raw, header=self.header, **_TEXT_KWARGS)
        self.header = False

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self.handle is not None:
            self.handle.close()
        self.raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Remove the temporary file if :meth:`close` did not run."""
        if not self.raw.closed:
            self.raw.close()
        self.tmp.unlink(missing_ok=True)


def write_table(frame: pd.DataFrame, path: Path, *, compress: bool) -> None:
    """Write a tab-separated table atomically (temporary file, then rename); gzip without a timestamp."""
    tmp = path.with_name(path.name + ".tmp")
    text_kwargs = _TEXT_KWARGS
    if compress:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle,
        ):
            frame.to_csv(handle, **text_kwargs)
    else:
        frame.to_csv(tmp, **text_kwargs)
    os.replace(tmp, path)
