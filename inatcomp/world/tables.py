"""Writing the tables of a synthetic export: tab-separated with a header, optionally gzipped, atomically."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pandas as pd

__all__ = ["EXPORT_TABLES", "write_table"]

#: The four export tables, in the order they are written.
EXPORT_TABLES = ("taxa", "observations", "photos", "observers")


def write_table(frame: pd.DataFrame, path: Path, *, compress: bool) -> None:
    """Write a tab-separated table atomically (temporary file, then rename); gzip without a timestamp."""
    tmp = path.with_name(path.name + ".tmp")
    text_kwargs = {
        "sep": "\t",
        "index": False,
        "quoting": csv.QUOTE_NONE,
        "lineterminator": "\n",
        "float_format": "%.10g",
    }
    if compress:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle,
        ):
            frame.to_csv(handle, **text_kwargs)
    else:
        frame.to_csv(tmp, **text_kwargs)
    os.replace(tmp, path)
