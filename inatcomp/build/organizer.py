"""The organizer's files: the hidden solution, a sample submission, the provenance of every image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from inatcomp.build.audit import _provenance_leakage
from inatcomp.build.rules import BuildRules
from inatcomp.build.selection import _Selection
from inatcomp.formats.competitions import format_of_preset
from inatcomp.formats.tables import write_csv_columns


def _write_solution(path: Path, *, rules: BuildRules, seed: int, test_ids: np.ndarray, expected: np.ndarray) -> None:
    """Write the hidden solution: each test image's category and leaderboard (``private_fraction`` private)."""
    rng = np.random.default_rng([seed, 19])
    private = rng.random(len(test_ids)) < rules.private_fraction
    columns = {
        "id": test_ids,
        "expected": expected,
        "usage": pa.array(["Public", "Private"]).take(pa.array(private.astype(np.int8))),
    }
    write_csv_columns(path, columns)


def _write_sample_submission(path: Path, *, rules: BuildRules, test_ids: np.ndarray, n_classes: int) -> None:
    """Write a sample submission: every test image with the labels 0, 1, … (as many as the year's rows take).

    The format is the preset's, from the one table of the years' facts (docs/formats.md §4): the production
    preset writes 2021's, the format the kit's own submissions of such a release use, so a leaderboard ranks
    them all on one metric.
    """
    competition = format_of_preset(rules.preset).competition
    header = competition.columns
    sample_labels = " ".join(str(k) for k in range(min(competition.labels, max(n_classes, 1))))
    columns = {
        header[0]: test_ids,
        header[1]: pa.array([sample_labels]).take(pa.array(np.zeros(len(test_ids), np.int8))),
    }
    write_csv_columns(path, columns)


def _write_provenance(path: Path, selection: _Selection) -> tuple[dict[str, int], np.ndarray]:
    """Write the provenance of every image and re-read it for the leakage check.

    Returns:
        What :func:`~inatcomp.build.audit._provenance_leakage` finds in the written file.
    """
    s = selection
    provenance = {
        "image_id": np.arange(len(s.photo_id), dtype=np.int64),
        "split": pa.array(["train", "val", "test"]).take(pa.array(s.split)),
        "photo_id": s.photo_id,
        "observation_uuid": s.columns.observation_uuid,
        "observer_id": s.columns.observer_id,
        "taxon_id": s.cat_frame["taxon_id"].to_numpy()[s.category],
    }
    write_csv_columns(path, provenance)
    return _provenance_leakage(path)
