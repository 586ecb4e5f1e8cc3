"""Formats: validation of every file kind, the competition years' facts, the taxonomy, the ``.pred`` layer.

:mod:`~inatcomp.formats.validate` (:func:`validate_file`, :func:`guess_kind`) guesses a file's kind and runs
:mod:`~inatcomp.formats.json_checks` (JSON Schema, then the links between records) or
:mod:`~inatcomp.formats.table_checks` (header, cells, submission labels), both starting from the strict reading
and the schemas of :mod:`~inatcomp.formats.kinds` (:class:`FileKind`, :class:`Problem`, ``data_schema/``);
:mod:`~inatcomp.formats.tables` reads and writes the delimited tables; :mod:`~inatcomp.formats.competitions` holds
the competition years' facts (:data:`COMPETITIONS`), :mod:`~inatcomp.formats.taxonomy` the ranks, ancestry and
supercategories, and :mod:`~inatcomp.formats.predictions` the ``.pred`` prediction-file layer
(:class:`PredictionWriter`, :func:`open_predictions`). The ``.pred`` layer lives here, not in ``predict/``,
because both sides use it: ``predict/`` writes prediction files, ``score/`` reads them, and ``score`` must not
import ``predict``. This subpackage may import only :mod:`inatcomp.fileio` and :mod:`inatcomp.options` of
inatcomp, and no torch. The names below are re-exported lazily (PEP 562): importing :mod:`inatcomp.formats` costs
nothing and a name loads only its own module (the table modules import pandas and pyarrow, the JSON checks
jsonschema). Inside the package, code imports from the defining module.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "COMPETITIONS",
    "LIFE_TAXON_ID",
    "SCHEMA_DIR",
    "Competition",
    "FileKind",
    "PredictionWriter",
    "Predictions",
    "Problem",
    "Rank",
    "ScoreKind",
    "SubmissionFormat",
    "Supercategory",
    "TaxonIndex",
    "expected_columns",
    "format_of_preset",
    "guess_kind",
    "index_of",
    "load_labels",
    "load_schema",
    "open_predictions",
    "read_table",
    "split_ancestry",
    "supercategory_of",
    "top_k_columns",
    "validate_file",
    "write_csv_columns",
]

#: Each re-exported name and the module that defines it.
_MODULES = {
    "COMPETITIONS": "inatcomp.formats.competitions",
    "Competition": "inatcomp.formats.competitions",
    "SubmissionFormat": "inatcomp.formats.competitions",
    "format_of_preset": "inatcomp.formats.competitions",
    "LIFE_TAXON_ID": "inatcomp.formats.taxonomy",
    "Rank": "inatcomp.formats.taxonomy",
    "Supercategory": "inatcomp.formats.taxonomy",
    "TaxonIndex": "inatcomp.formats.taxonomy",
    "split_ancestry": "inatcomp.formats.taxonomy",
    "supercategory_of": "inatcomp.formats.taxonomy",
    "SCHEMA_DIR": "inatcomp.formats.kinds",
    "FileKind": "inatcomp.formats.kinds",
    "Problem": "inatcomp.formats.kinds",
    "load_schema": "inatcomp.formats.kinds",
    "guess_kind": "inatcomp.formats.validate",
    "validate_file": "inatcomp.formats.validate",
    "read_table": "inatcomp.formats.tables",
    "write_csv_columns": "inatcomp.formats.tables",
    "PredictionWriter": "inatcomp.formats.predictions",
    "Predictions": "inatcomp.formats.predictions",
    "ScoreKind": "inatcomp.formats.predictions",
    "expected_columns": "inatcomp.formats.predictions",
    "index_of": "inatcomp.formats.predictions",
    "load_labels": "inatcomp.formats.predictions",
    "open_predictions": "inatcomp.formats.predictions",
    "top_k_columns": "inatcomp.formats.predictions",
}


def __getattr__(name: str) -> Any:
    """A re-exported name, importing its module on first use (PEP 562)."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
