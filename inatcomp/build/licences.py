"""``--licenses``: which photo licences a build keeps, for both readers of the export (in memory and the engine)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.audit import _Audit

__all__ = ["LICENCE_RULE", "allowed_licences", "keep_licenses", "warn_absent_licences"]

_logger = logging.getLogger(__name__)

#: The audit's name for the photos ``--licenses`` leaves out.
LICENCE_RULE = "licence not in --licenses"


def allowed_licences(licenses: Sequence[str]) -> list[str]:
    """The licences named, without case or surrounding blanks (as the photos' licences are compared).

    Raises:
        ValueError: No licence named.
    """
    allowed = sorted({name.strip().upper() for name in licenses if name.strip()})
    if not allowed:
        raise ValueError("--licenses: name at least one licence, e.g. CC0,CC-BY")
    return allowed


def warn_absent_licences(allowed: Sequence[str], present: Iterable[str]) -> None:
    """Warn about named licences no photo of the export is under (most likely a misspelt name)."""
    present = set(present)
    absent = [name for name in allowed if name not in present]
    if absent:
        _logger.warning(
            "--licenses: no photo is under %s (the export's licences: %s)",
            ", ".join(absent),
            ", ".join(sorted(n or "(none)" for n in present)),
        )


def keep_licenses(photos: pa.Table, licenses: Sequence[str], audit: _Audit) -> pa.Table:
    """The photos under one of ``licenses`` (compared without case or surrounding blanks); the rest counted."""
    allowed = allowed_licences(licenses)
    names = pc.utf8_upper(pc.utf8_trim_whitespace(photos["license"].fill_null("")))
    warn_absent_licences(allowed, pc.unique(names).to_pylist())
    keep = pc.is_in(names, value_set=pa.array(allowed, pa.string()))
    audit.add(LICENCE_RULE, photos=photos.num_rows - int(pc.sum(keep).as_py() or 0))
    return photos.filter(keep)
