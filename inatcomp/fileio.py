"""Writing files whole or not at all, reading JSON, finding a checkpoint's files: the file
primitives every stage shares.

Every output goes to a temporary file in its folder first and is renamed into place, so nothing is left
half-written under either name. Imports nothing heavy (orjson takes a few milliseconds), so the scoring commands
can use it and still start at once; the fast pyarrow writer of big comma-separated tables is
:func:`inatcomp.formats.tables.write_csv_columns`.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "read_json",
    "replace_generated_block",
    "resolve_checkpoint",
    "write_atomic",
    "write_csv",
    "write_json",
]


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str | Iterable[bytes]) -> Path:
    """Write ``data`` (bytes, text, or an iterable of byte pieces streamed in order) to ``path`` atomically.

    The data goes to a temporary file in the same folder, renamed over ``path`` when complete; the temporary
    file is removed if writing fails, so nothing half-written is left under either name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, str | bytes | bytearray | memoryview):
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            else:
                for piece in data:
                    handle.write(piece)
            # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less umask).
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write JSON atomically, keys in the order given, UTF-8, deterministic (orjson: fast at release scale)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    write_atomic(path, orjson.dumps(obj, option=option | orjson.OPT_SERIALIZE_NUMPY))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (orjson: several times faster than the standard library on release files).

    Raises:
        ValueError: Naming the file: unreadable, or not JSON (with orjson's line and column).
    """
    try:
        return orjson.loads(Path(path).read_bytes())
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON ({error})") from None


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a comma-separated file atomically with ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def replace_generated_block(path: str | os.PathLike, name: str, text: str) -> Path:
    """Replace the text between ``<!-- NAME:begin ... -->`` and ``<!-- NAME:end -->`` in a Markdown file.

    The markers stay (the begin marker may carry a note after the name, e.g. who writes the block); everything
    outside them is kept byte for byte. Figures in a README are written this way, by the code that measured them.

    Raises:
        ValueError: The file lacks either marker, naming the file and the markers expected.
    """
    path = Path(path)
    begin, end = f"<!-- {name}:begin", f"<!-- {name}:end -->"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    start = old.find(begin)
    stop = old.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{path}: no generated block '{begin} ... -->' ... '{end}' to replace")
    head = old[: old.index("-->", start) + 3]
    write_atomic(path, f"{head}\n{text.strip()}\n{old[stop:]}")
    return path


def resolve_checkpoint(path: str | os.PathLike, *, prefer: str = "best") -> Path:
    """The weights file of a checkpoint path, a checkpoint stem, or a run folder (its ``best`` or ``last``).

    Raises:
        ValueError: Nothing loadable there.
    """
    path = Path(path)
    candidates = []
    if path.is_dir():
        other = "last" if prefer == "best" else "best"
        candidates = [path / f"{prefer}.safetensors", path / f"{other}.safetensors"]
    elif path.suffix == ".safetensors":
        candidates = [path]
    else:
        candidates = [path.with_name(path.name + ".safetensors")]
    for candidate in candidates:
        if candidate.is_file() and candidate.with_suffix(".json").is_file():
            return candidate
    raise ValueError(f"{path}: no checkpoint (expected NAME.safetensors with NAME.json beside it)")
