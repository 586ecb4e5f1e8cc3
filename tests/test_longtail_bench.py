"""The long-tail benchmark (benchmarks/longtail.py): the balanced quota, the Markdown block, the --quick run."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from benchmarks import longtail
from inatcomp.formats.predictions import open_predictions


def test_balanced_subset_takes_at_most_the_quota_of_each_class():
    expected = np.array([5] * 40 + [7] * 2 + [9] * 6)
    chosen = longtail.balanced_subset(expected, 3, seed=0)
    assert collections.Counter(expected[chosen].tolist()) == {5: 3, 7: 2, 9: 3}
    assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    assert np.array_equal(chosen, longtail.balanced_subset(expected, 3, seed=0))
    assert not np.array_equal(chosen, longtail.balanced_subset(expected, 3, seed=1))


def test_write_markdown_appends_then_replaces_the_block(tmp_path):
    path = tmp_path / "ABLATION.md"
    path.write_text("# Ablation\n\nOther tables.\n", encoding="utf-8")
    longtail.write_markdown(path, f"{longtail.BEGIN}\nfirst\n{longtail.END}\n")
    longtail.write_markdown(path, f"{longtail.BEGIN}\nsecond\n{longtail.END}\n")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Ablation\n\nOther tables.\n") and "second" in text and "first" not in text
    assert text.count(longtail.BEGIN) == 1


@pytest.mark.slow
def test_quick_longtail_end_to_end(tmp_path):
    out = tmp_path / "ABLATION.md"
    rows = longtail.main(["--quick", "--out", str(tmp_path / "runs"), "--write", str(out)])
    assert [r.name for r in rows] == list(longtail.ROWS)
    for row in rows:
        for test in longtail.TESTS:
            top1, top3 = row.values[f"{test}_top1_error"][0], row.values[f"{test}_top3_error"][0]
            assert 0.0 <= top3 <= top1 <= 1.0, row.name
    by_name = {r.name: r for r in rows}
    # Fitted rows record their τ (or P) per test, from the grids they were chosen on.
    for name in ("joint_fit", "balanced_fit"):
        assert all(-2.0 <= by_name[name].values[f"{t}_param"][0] <= 2.0 for t in longtail.TESTS)
        assert by_name[name].values["lt_effective_images"][0] < by_name[name].values["bal_effective_images"][0]
    # τ from the training prior: what the published distribution implies for each sampler.
    assert by_name["joint_prior"].values["lt_param"] == [0.0] and by_name["joint_prior"].values["bal_param"] == [1.0]
    assert by_name["sqrt_prior"].values["lt_param"] == [-0.5] and by_name["balanced_prior"].values["lt_param"] == [-1.0]
    assert by_name["joint_prior"].values["lt_top1_error"] == by_name["joint"].values["lt_top1_error"]  # τ = 0
    assert all(by_name["tau_norm"].values[f"{t}_param"][0] in (0.0, *longtail.TAU_NORM_POWERS) for t in longtail.TESTS)
    # cRT's classifier was re-trained from a new head: its test probabilities are not joint's.
    predictions = tmp_path / "runs" / "seed0" / "predictions"
    joint, crt = (open_predictions(predictions / name / "test.pred") for name in ("joint", "crt"))
    assert np.array_equal(joint.image_ids, crt.image_ids)
    assert np.abs(joint.take_rows(np.arange(joint.n_images)) - crt.take_rows(np.arange(crt.n_images))).max() > 0.01
    text = out.read_text(encoding="utf-8")
    assert longtail.BEGIN in text and longtail.END in text
    assert all(f"| {title} |" in text for title in longtail.ROWS.values())
