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

from inatcomp import lazy_exports

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
    "COMPETITIONS": "competitions",
    "Competition": "competitions",
    "SubmissionFormat": "competitions",
    "format_of_preset": "competitions",
    "LIFE_TAXON_ID": "taxonomy",
    "Rank": "taxonomy",
    "Supercategory": "taxonomy",
    "TaxonIndex": "taxonomy",
    "split_ancestry": "taxonomy",
    "supercategory_of": "taxonomy",
    "SCHEMA_DIR": "kinds",
    "FileKind": "kinds",
    "Problem": "kinds",
    "load_schema": "kinds",
    "guess_kind": "validate",
    "validate_file": "validate",
    "read_table": "tables",
    "write_csv_columns": "tables",
    "PredictionWriter": "predictions",
    "Predictions": "predictions",
    "ScoreKind": "predictions",
    "expected_columns": "predictions",
    "index_of": "predictions",
    "load_labels": "predictions",
    "open_predictions": "predictions",
    "top_k_columns": "predictions",
}


__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
