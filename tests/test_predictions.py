"""Tests of the prediction-file layer: the format, ids to positions, labels to expected columns, top-k columns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inatcomp.cli import main
from inatcomp.formats.predictions import (
    PredictionWriter,
    expected_columns,
    index_of,
    load_labels,
    open_predictions,
    top_k_columns,
)
from inatcomp.score.scoring import score_predictions


def test_top_k_columns_orders_by_score_then_column():
    scores = np.array([[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=np.float16)
    np.testing.assert_array_equal(top_k_columns(scores, 3), [[1, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(top_k_columns(scores, 9), [[1, 2, 3, 0], [0, 1, 2, 3]])


def test_prediction_folder_round_trip_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(7), size=23).astype(np.float16)
    ids, cats = np.arange(100, 123), np.array([5, 3, 9, 1, 7, 2, 8])
    out = tmp_path / "a.pred"
    with PredictionWriter(out, image_ids=ids, category_ids=cats, header={"model": "x"}) as writer:
        for start in range(0, 23, 5):
            writer.write(scores[start : start + 5])
        writer.header["failed_images"] = 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pred"]  # no temporary left
    preds = open_predictions(out)
    assert preds.header["model"] == "x" and preds.header["failed_images"] == 1
    np.testing.assert_array_equal(preds.image_ids, ids)
    np.testing.assert_array_equal(preds.category_ids, cats)
    np.testing.assert_array_equal(preds.memmap(), scores)
    np.testing.assert_array_equal(np.concatenate([c for _, c in preds.iter_chunks(4)]), scores)
    rows = np.array([5, 0, 6, 7, 22, 1])
    np.testing.assert_array_equal(preds.take_rows(rows), scores[rows])
    raw = np.fromfile(out / "scores.f16", dtype="<f2").reshape(23, 7)  # plain little-endian float16
    np.testing.assert_array_equal(raw, scores)


def test_writer_refuses_wrong_rows_and_foreign_folders(tmp_path):
    writer = PredictionWriter(tmp_path / "b.pred", image_ids=[1, 2], category_ids=[1])
    writer.write(np.ones((1, 1)))
    with pytest.raises(ValueError, match="rows written"):
        writer.close()
    assert not any(tmp_path.iterdir())
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="not a prediction folder"):
        PredictionWriter(tmp_path / "mine", image_ids=[1], category_ids=[1])
    with pytest.raises(ValueError, match="not a prediction folder"):
        open_predictions(tmp_path / "mine")


def test_score_predictions_on_a_constructed_file(tmp_path):
    labels = tmp_path / "val.json"
    images = [{"id": i, "width": 1, "height": 1, "file_name": f"{i}.jpg"} for i in (10, 11, 12, 13)]
    annotations = [
        {"id": i, "image_id": im, "category_id": c} for i, (im, c) in enumerate(zip((10, 11, 12, 13), (1, 2, 3, 9)))
    ]
    labels.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    scores = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    with PredictionWriter(tmp_path / "s.pred", image_ids=[13, 12, 11, 10], category_ids=[1, 2, 3]) as writer:
        writer.write(scores[::-1])
    result = score_predictions(tmp_path / "s.pred", labels, k=2)
    # 10: right; 11: second; 12: right; 13: label 9 outside the head.
    assert result["top1_error"] == 0.5 and result["top2_error"] == 0.25 and result["outside_head"] == 1
    with pytest.raises(ValueError, match="not predicted"):
        score_predictions(tmp_path / "s.pred", _more(labels), k=2)


def _more(labels):
    data = json.loads(labels.read_text())
    data["images"].append({"id": 99, "width": 1, "height": 1, "file_name": "99.jpg"})
    data["annotations"].append({"id": 99, "image_id": 99, "category_id": 1})
    path = labels.with_name("more.json")
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "keys",
    [
        np.array([7, 3, 0, 12, 5]),  # compact: the dense table
        np.array([7, -3, 0, 12, 5]),  # a negative key: the sorted search
        np.array([2**40, 3, 2**62, 17]),  # sparse and huge: the sorted search
        np.array([], dtype=np.int64),
    ],
)
def test_index_of_finds_each_key_and_marks_the_rest(keys):
    queries = np.array([5, 12, -3, 99, 2**62, -1, 0, 2**40, 7])
    got = index_of(keys, queries)
    want = [keys.tolist().index(q) if q in keys.tolist() else -1 for q in queries.tolist()]
    assert got.tolist() == want


def _labelled(path, pairs):
    images = [{"id": i, "width": 1, "height": 1, "file_name": f"{i}.jpg"} for i, _ in pairs]
    annotations = [{"id": n, "image_id": i, "category_id": c} for n, (i, c) in enumerate(pairs)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def test_expected_columns_refuses_rows_without_labels_and_labels_without_rows(tmp_path):
    with PredictionWriter(tmp_path / "p.pred", image_ids=[10, 11, 12], category_ids=[4, 5]) as writer:
        writer.write(np.full((3, 2), 0.5))
    preds = open_predictions(tmp_path / "p.pred")
    truth = expected_columns(preds, _labelled(tmp_path / "v.json", [(12, 5), (10, 4), (11, 9)]))
    assert truth.categories.tolist() == [4, 9, 5] and truth.columns.tolist() == [0, -1, 1] and truth.outside_head == 1
    more = _labelled(tmp_path / "more.json", [(10, 4), (11, 4), (12, 4), (13, 5)])
    with pytest.raises(ValueError, match=r"1 labelled image\(s\) .* not predicted \(e.g. \[13\]\)"):
        expected_columns(preds, more)
    assert expected_columns(preds, more, partial=True).columns.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"1 image id\(s\) without a label .* \(e.g. \[12\]\)"):
        expected_columns(preds, _labelled(tmp_path / "less.json", [(10, 4), (11, 4)]))


def test_load_labels_names_the_file_on_bad_input(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"annotations": [')
    with pytest.raises(ValueError, match="broken.json: malformed JSON"):
        load_labels(broken)
    unlabelled = tmp_path / "test.json"
    unlabelled.write_text('{"images": []}')
    with pytest.raises(ValueError, match="test.json: not a labelled competition JSON"):
        load_labels(unlabelled)
    twice = _labelled(tmp_path / "twice.json", [(1, 2), (1, 3)])
    with pytest.raises(ValueError, match="two different labels"):
        load_labels(twice)


def test_score_pred_prints_its_analysis_as_markdown_sections(tmp_path, capsys):
    """Without --json the analyses are tables of their own, not one cell holding a Python dict."""
    categories = [
        {"id": 1, "name": "Parus major", "supercategory": "Aves", "genus": "Parus", "family": "Paridae"},
        {"id": 2, "name": "Parus minor", "supercategory": "Aves", "genus": "Parus", "family": "Paridae"},
    ]
    (tmp_path / "categories.json").write_text(json.dumps(categories))
    _labelled(tmp_path / "train2018.json", [(100, 1), (101, 1), (102, 2)])
    val = _labelled(tmp_path / "val2018.json", [(10, 1), (11, 2), (12, 2)])
    with PredictionWriter(tmp_path / "v.pred", image_ids=[10, 11, 12], category_ids=[1, 2]) as writer:
        writer.write(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]))
    assert main(["score-pred", str(tmp_path / "v.pred"), "--labels", str(val), "--dataset", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| top1_error | 0.3333 |" in printed
    assert "## Per supercategory" in printed and "| Aves |" in printed
    assert "{" not in printed  # no dict repr anywhere
