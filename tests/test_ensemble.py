"""Tests of ensembling prediction files: identity, streaming, alignment, refusals, fitted weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inatcomp.cli import main
from inatcomp.formats.predictions import PredictionWriter, open_predictions
from inatcomp.predict.ensemble import EnsembleMode, combine, ensemble, fit_weights

IMAGES = np.arange(1000, 1040)
CATEGORIES = np.array([11, 4, 7, 30, 2, 19])


def _write(path, scores, image_ids=IMAGES, category_ids=CATEGORIES):
    with PredictionWriter(path, image_ids=image_ids, category_ids=category_ids) as writer:
        writer.write(scores)
    return path


def _random(seed, rows=None):
    alpha = np.full(len(CATEGORIES), 0.5)
    return np.random.default_rng(seed).dirichlet(alpha, size=rows or len(IMAGES)).astype(np.float16)


def _scores(path):
    return np.asarray(open_predictions(path).memmap(), dtype=np.float32)


def test_ensembling_identical_files_returns_the_file(tmp_path):
    a = _write(tmp_path / "a.pred", _random(0))
    for count in (2, 3):
        out = ensemble([a] * count, out=tmp_path / f"same{count}.pred")
        np.testing.assert_array_equal(_scores(out), _scores(a))
    logit = ensemble([a, a], out=tmp_path / "logit.pred", mode=EnsembleMode.MEAN_LOGIT)
    np.testing.assert_allclose(_scores(logit), _scores(a), atol=2e-3)
    rank = ensemble([a, a], out=tmp_path / "rank.pred", mode="rank")
    np.testing.assert_array_equal(_scores(rank).argmax(1), _scores(a).argmax(1))
    assert open_predictions(rank).header["score_kind"] == "rank"


@pytest.mark.parametrize("mode", list(EnsembleMode))
def test_streaming_equals_in_memory(tmp_path, mode):
    members = [_random(seed) for seed in range(3)]
    paths = [_write(tmp_path / f"m{i}.pred", s) for i, s in enumerate(members)]
    weights = [0.5, 0.3, 0.2]
    small = ensemble(paths, out=tmp_path / "small.pred", weights=weights, mode=mode, chunk_rows=7)
    whole = ensemble(paths, out=tmp_path / "whole.pred", weights=weights, mode=mode)
    np.testing.assert_array_equal(_scores(small), _scores(whole))
    expected = combine([m.astype(np.float32) for m in members], weights, mode).astype(np.float16)
    np.testing.assert_array_equal(_scores(small), expected.astype(np.float32))
    assert np.allclose(_scores(small).sum(1), 1, atol=5e-3)


def test_permuted_files_are_aligned(tmp_path):
    scores = _random(1)
    a = _write(tmp_path / "a.pred", scores)
    rng = np.random.default_rng(5)
    rows, cols = rng.permutation(len(IMAGES)), rng.permutation(len(CATEGORIES))
    b = _write(tmp_path / "b.pred", scores[rows][:, cols], IMAGES[rows], CATEGORIES[cols])
    out = ensemble([a, b], out=tmp_path / "ab.pred", chunk_rows=6)
    np.testing.assert_array_equal(_scores(out), scores.astype(np.float32))
    np.testing.assert_array_equal(open_predictions(out).category_ids, CATEGORIES)  # the first member's order
    reverse = ensemble([b, a], out=tmp_path / "ba.pred", chunk_rows=6)
    np.testing.assert_array_equal(_scores(reverse), scores[rows][:, cols].astype(np.float32))


def test_mismatched_sets_are_refused_with_a_message(tmp_path):
    a = _write(tmp_path / "a.pred", _random(0))
    other_categories = CATEGORIES.copy()
    other_categories[2] = 99
    b = _write(tmp_path / "b.pred", _random(1), category_ids=other_categories)
    with pytest.raises(ValueError, match=r"categories differ.*1 categories only in the first \(e.g. \[7\]\).*\[99\]"):
        ensemble([a, b], out=tmp_path / "x.pred")
    c = _write(tmp_path / "c.pred", _random(1, rows=len(IMAGES) - 1), image_ids=IMAGES[1:])
    with pytest.raises(ValueError, match=r"images differ.*1 image ids only in the first \(e.g. \[1000\]\)"):
        ensemble([a, c], out=tmp_path / "x.pred")
    with pytest.raises(ValueError, match="weight"):
        ensemble([a, a], out=tmp_path / "x.pred", weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        ensemble([a, a], out=tmp_path / "x.pred", weights=[1.0, -1.0])
    assert not (tmp_path / "x.pred").exists()


def _labels_json(path, truth):
    images = [{"id": int(i), "width": 1, "height": 1, "file_name": f"{i}.jpg"} for i in IMAGES]
    annotations = [{"id": n, "image_id": int(i), "category_id": int(c)} for n, (i, c) in enumerate(zip(IMAGES, truth))]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def _model(truth_columns, accuracy, seed):
    """Scores whose argmax is the truth for a share ``accuracy`` of the rows."""
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(len(CATEGORIES)), size=len(IMAGES)) * 0.5
    right = rng.random(len(IMAGES)) < accuracy
    wrong = (truth_columns + 1 + rng.integers(0, len(CATEGORIES) - 1, len(IMAGES))) % len(CATEGORIES)
    target = np.where(right, truth_columns, wrong)
    scores[np.arange(len(IMAGES)), target] += 0.5
    return scores.astype(np.float16)


def test_fit_weights_prefers_the_better_model(tmp_path):
    truth_columns = np.random.default_rng(0).integers(0, len(CATEGORIES), len(IMAGES))
    labels = _labels_json(tmp_path / "val.json", CATEGORIES[truth_columns])
    good = _write(tmp_path / "good.pred", _model(truth_columns, 0.9, 1))
    bad = _write(tmp_path / "bad.pred", _model(truth_columns, 0.3, 2))
    fit = fit_weights([bad, good], labels, steps=10, chunk_rows=9)
    assert fit.weights[1] > fit.weights[0] and sum(fit.weights) == pytest.approx(1)
    assert fit.top1_error <= min(fit.member_top1_errors) and fit.member_top1_errors[1] < fit.member_top1_errors[0]
    # Through the command line: the fitted weights are used and recorded.
    out = tmp_path / "ens.pred"
    args = ["ensemble", str(bad), str(good), "--out", str(out), "--fit-weights", str(bad), str(good)]
    assert main([*args, "--labels", str(labels)]) == 0
    header = open_predictions(out).header
    assert header["ensemble"]["weights"] == pytest.approx(fit.weights)
    assert header["fit"]["top1_error"] == pytest.approx(fit.top1_error)
