"""The audit: what each rule removed, and leakage re-checked from the written files.

The leakage check counts the observers, observations and photos that the written provenance puts in two
splits, and the image ids of the written JSON files that it does not give the file's split: all zero in a
release (anything else is a bug, never an input problem).
"""

from __future__ import annotations

import collections
import dataclasses
import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from inatcomp.build.arrays import _sorted_unique, _unique_inverse, _uuid_key, _uuid_words, sort_with_order
from inatcomp.build.rules import BuildRules
from inatcomp.fileio import read_json, write_atomic, write_json


class _Audit:
    """Counts what each rule removed: observations, photos, classes, observers."""

    def __init__(self) -> None:
        self.rules: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, rule: str, **counts: int) -> None:
        for key, value in counts.items():
            if value:
                self.rules[rule][key] += int(value)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {rule: dict(sorted(c.items())) for rule, c in self.rules.items() if c}


def _write_audit(
    out: Path,
    *,
    rules: BuildRules,
    audit: _Audit,
    classes: int,
    sizes: dict[str, int],
    observers: dict[str, int],
    leakage: dict[str, int],
    fetch: dict | None = None,
) -> dict:
    """Write ``audit.json`` and ``audit.md``: the rules, what each removed, the sizes, observers and leakage.

    With ``fetch`` (:meth:`inatcomp.build.fetch.FetchReport.as_dict`) they gain a fetch section.

    Returns:
        The audit as written to ``audit.json``.
    """
    audit_dict = {
        "rules": {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(rules).items()},
        "removed": audit.as_dict(),
        "classes": classes,
        "images": sizes,
        "observers": observers,
        "leakage": leakage,
    }
    if fetch is not None:
        audit_dict["fetch"] = fetch
    write_json(out / "audit.json", audit_dict, indent=2)
    write_atomic(out / "audit.md", _audit_markdown(audit_dict))
    return audit_dict


def _audit_markdown(audit: dict) -> str:
    """``audit.md``: what each rule removed, the splits' sizes and observers, the leakage counts."""
    lines = ["# Build audit", "", f"Preset `{audit['rules']['preset']}`; {audit['classes']:,} classes kept.", ""]
    lines += ["| rule | classes | observations | photos |", "| --- | ---: | ---: | ---: |"]
    for rule, counts in audit["removed"].items():
        cells = " | ".join(f"{counts.get(key, 0):,}" for key in ("classes", "observations", "photos"))
        lines.append(f"| {rule} | {cells} |")
    lines += ["", "| split | images | observers |", "| --- | ---: | ---: |"]
    for part in ("train", "val", "test"):
        lines.append(f"| {part} | {audit['images'].get(part, 0):,} | {audit['observers'].get(part, 0):,} |")
    if "train_mini" in audit["images"]:
        lines.append(f"| train_mini | {audit['images']['train_mini']:,} | |")
    lines += ["", "Leakage re-checked from the written files:", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in audit["leakage"].items()]
    if "fetch" in audit:
        lines += ["", *_fetch_markdown(audit["fetch"])]
    return "\n".join(lines) + "\n"


def _fetch_markdown(fetch: dict) -> list[str]:
    """The audit's fetch section: photos needed, from the cache, fetched, retried, failed for good and why."""
    lines = ["## Photos fetched", "", "| | photos |", "| --- | ---: |"]
    keys = ("needed", "from_cache", "requested", "fetched", "known_gone", "permanently_failed", "replaced", "dropped")
    for key in keys:
        lines.append(f"| {key.replace('_', ' ')} | {fetch[key]:,} |")
    lines += ["", f"{fetch['requests']:,} requests, {fetch['retried']:,} retried; {fetch['bytes']:,} bytes received;"
              f" {fetch['rounds']} selection round(s).", ""]  # fmt: skip
    sections = (("Retries by reason", "retries_by_reason"), ("Permanent failures by reason", "failed_by_reason"))
    for title, key in sections:
        if fetch[key]:
            lines += [f"{title}:", "", *(f"- {reason}: {count:,}" for reason, count in fetch[key].items()), ""]
    return lines[:-1] if lines[-1] == "" else lines


def check_leakage(out: str | os.PathLike, names: dict[str, str] | None = None) -> dict[str, int]:
    """Re-read the written provenance and JSON files and count observers, observations, photos in two splits.

    Also checks that every image id of the JSON files is in the provenance with the same split. The JSON
    files are scanned for their image ids directly in the text when they have the builder's compact layout
    (every image record starting with its ``id``), else parsed whole.
    """
    out = Path(out)
    result, split_of = _provenance_leakage(out / "provenance.csv")
    json_ids = {part: _json_image_ids(out / names[part]) for part in ("train", "val", "test")} if names else {}
    result["json_images_not_in_provenance_split"] = _json_mismatches(json_ids, split_of)
    return result


def _provenance_leakage(path: Path) -> tuple[dict[str, int], np.ndarray]:
    """Observers, observations and photos in two splits, read from a written ``provenance.csv``.

    Returns:
        The three counts, and the split code (0 train, 1 val, 2 test, 3 other) of every image id, -1 for
        ids that are not there.
    """
    types = {"image_id": pa.int64(), "photo_id": pa.int64(), "observer_id": pa.int64()}
    prov = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={**types, "observation_uuid": pa.string(), "split": pa.dictionary(pa.int32(), pa.string())},
            include_columns=[*types, "split", "observation_uuid"],
            strings_can_be_null=False,
        ),
    )
    codes = []
    for chunk in prov["split"].chunks:
        lookup = {"train": 0, "val": 1, "test": 2}
        table = np.array([lookup.get(v, 3) for v in chunk.dictionary.to_pylist()] or [3], dtype=np.int64)
        codes.append(table[chunk.indices.to_numpy(zero_copy_only=False)])
    split_code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    result = {}
    for what, column in (("observers", "observer_id"), ("observations", "observation_uuid"), ("photos", "photo_id")):
        result[f"{what}_in_two_splits"] = _in_two_splits(prov[column], split_code)
    image_ids = prov["image_id"].to_numpy()
    split_of = np.full(int(image_ids.max(initial=-1)) + 1, -1)
    split_of[image_ids] = split_code
    return result, split_of


def _json_mismatches(json_ids: dict[str, np.ndarray], split_of: np.ndarray) -> int:
    """Image ids of the train, val and test files that the provenance does not give the file's split."""
    mismatched = 0
    for code, part in enumerate(("train", "val", "test")):
        if part not in json_ids:
            continue
        ids = json_ids[part]
        known = (ids >= 0) & (ids < len(split_of))
        mismatched += int((~known).sum()) + int((split_of[ids[known]] != code).sum())
    return mismatched


def _in_two_splits(values: pa.ChunkedArray, split_code: np.ndarray) -> int:
    """How many distinct values occur with more than one split code."""
    array = values.combine_chunks()
    codes = _value_codes(array)
    pairs = _sorted_unique(codes * 4 + split_code)
    value_of_pair = pairs // 4
    return len(_sorted_unique(value_of_pair[1:][value_of_pair[1:] == value_of_pair[:-1]]))


def _value_codes(array: pa.Array) -> np.ndarray:
    """Integers equal exactly where the values are equal: the values themselves for integers, else codes."""
    if pa.types.is_integer(array.type) and not array.null_count:
        values = array.to_numpy().astype(np.int64)
        if len(values) == 0 or (values.min() >= -(1 << 60) and values.max() < 1 << 60):
            return values
        return _unique_inverse(values)[1]
    words = _uuid_words(array)
    if words is not None:  # uuids: grouped by a 64-bit hash, rows sharing a hash confirmed byte for byte
        ordered, order = sort_with_order(_uuid_key(words))
        same = ordered[1:] == ordered[:-1]
        first, second = order[:-1][same], order[1:][same]
        if all((w[first] == w[second]).all() for w in words):
            codes = np.empty(len(array), dtype=np.int64)
            codes[order] = np.cumsum(np.r_[True, ~same]) - 1
            return codes
    return pc.dictionary_encode(array).indices.to_numpy(zero_copy_only=False).astype(np.int64)


_ID_KEY = np.frombuffer(b'"id":', dtype=np.uint8)
#: Bytes after an image record's ``{``: ``"id":``, a sign, at most 19 digits and the ``,`` after them.
_ID_WINDOW = 5 + 1 + 19 + 1


def _json_image_ids(path: Path) -> np.ndarray:
    """The ``id`` of every record of a dataset JSON's ``images``, read from the file's text.

    A JSON string cannot hold an unescaped ``"``, so in the compact layout the builder writes, the images
    array ends at the only ``],"licenses":`` and every ``{`` in it opens an image record whose first key is
    its integer ``id``: the ids are read there with NumPy. A file in any other layout (or with a ``{`` in
    some text) is parsed whole.
    """
    ids = None
    if path.stat().st_size:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text:
            start = text.find(b'"images":[{"id":')
            end = text.rfind(b'],"licenses":')
            if 0 <= start < end:
                ids = _record_ids(text, start + len(b'"images":['), end)
    if ids is None:
        ids = np.fromiter((image["id"] for image in read_json(path)["images"]), np.int64)
    return ids


def _record_ids(text: bytes | mmap.mmap, start: int, end: int) -> np.ndarray | None:
    """The ids ``{"id":N,`` of the records in ``text[start:end]``; None unless every ``{`` there opens one.

    Nothing returned refers to ``text`` (a memory map is closed after).
    """
    region = np.frombuffer(text, dtype=np.uint8, count=end - start, offset=start)
    opens = np.flatnonzero(region == ord("{"))
    if len(opens) == 0 or opens[-1] + 1 + _ID_WINDOW > len(region):
        return None
    window = np.lib.stride_tricks.as_strided(region, shape=(len(region) - _ID_WINDOW, _ID_WINDOW), strides=(1, 1))
    window = window[opens + 1]
    if not (window[:, :5] == _ID_KEY).all():
        return None
    number = window[:, 5:]
    negative = number[:, 0] == ord("-")
    is_digit = (number >= ord("0")) & (number <= ord("9"))
    is_digit[:, 0] |= negative
    length = np.argmin(is_digit, axis=1)  # the first byte after the digits (0 when all are digits)
    fits = (length > negative) & (length - negative <= 18)  # at least one digit, and no int64 overflow
    if not (fits & (number[np.arange(len(opens)), length] == ord(","))).all():
        return None
    value = np.zeros(len(opens), dtype=np.int64)
    for k in range(int(length.max())):
        digit = number[:, k].astype(np.int64) - ord("0")
        value = np.where((k < length) & (digit >= 0), value * 10 + digit, value)
    return np.where(negative, -value, value)
