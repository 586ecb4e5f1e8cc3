"""The long-tail tools on a long-tailed and a balanced test: logit adjustment, τ-norm, cRT, the adjusted loss.

What it measures. One synthetic iNat2018-style release built with the preset's own test (a share of train taken
by whole observers, so it follows train's long tail) and, from the same test, a **balanced test**: at most
``balanced_per_class`` images of each class, drawn at random (a per-class quota, as iNat2018's val and the
long-tail papers' test sets are). Every model is scored on both. For each training seed:

1. **joint**: plain cross-entropy on random batches (the instance-balanced representation of Kang et al.);
   + **post-hoc logit adjustment** (Menon et al.), ``p · π_train^-τ``, with τ either from the prior the model
   trained under (``inatcomp.predict.longtail.tau_towards``: the organizer publishes the test's distribution; for
   joint ``τ = 0`` on the long-tailed test, ``+1`` on the balanced one) or fitted on the minival for each test
   (``inatcomp.predict.longtail.fit_tau``: ``val`` for the balanced test, ``train`` for the long-tailed one);
   + **τ-norm** (Kang et al.): classifier rows divided by ``‖w‖^P``, P fitted on the minival the same way;
2. **cRT** (Kang et al.): joint's backbone frozen, the classifier re-initialised and re-trained on class-balanced
   batches (``inatcomp train --stage classifier --reset-head``), as trained and moved to each test's prior;
3. the **logit-adjusted loss** (τ = 1, random batches), as trained (its logits are the balanced ones) and moved;
4. **square-root batches** (each class drawn ∝ √n), as trained and moved (τ = −0.5 for the long-tailed test);
5. **class-balanced batches**, as trained, moved, and with τ fitted.

Every change is given against row 1, paired by seed. The published iNat2018 directions (ResNet-50, top-1
accuracy on the balanced val): joint 61.7 → cRT 65.2 → τ-norm 65.6 (Kang et al., ICLR 2020), logit-adjusted loss
66.4 (Menon et al., ICLR 2021): each lowers the balanced error; on a test that follows train, the theory says the
joint model is already the Bayes rule (τ ≈ 0) and every balancing step costs head-class accuracy unless it is
adjusted back.

    python -m benchmarks.longtail --write ABLATION.md --write README.md   # the full run (make ablation)
    python -m benchmarks.longtail --quick --out /tmp/lt      # a tiny smoke run

``--write`` replaces the part of the Markdown file between the ``longtail:begin``/``longtail:end`` markers
(appending the block when the file has none) and keeps everything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ablation import FULL as ABLATION_FULL
from benchmarks.ablation import QUICK as ABLATION_QUICK
from benchmarks.ablation import Row, Setup, _cell, _Clock, _release, _train_options

__all__ = ["FULL", "QUICK", "ROWS", "LongTailSetup", "balanced_subset", "main", "markdown", "run", "write_markdown"]

_logger = logging.getLogger(__name__)

#: The markers around the generated block.
BEGIN, END = "<!-- longtail:begin (written by benchmarks/longtail.py) -->", "<!-- longtail:end -->"
#: The two tests: key → title.
TESTS = {"lt": "long-tailed test (follows train)", "bal": "balanced test (per-class quota)"}
#: The rows: key → title.
ROWS = {
    "joint": "joint: cross-entropy, random batches",
    "joint_prior": "joint + logit adjustment, τ from the training prior",
    "joint_fit": "joint + logit adjustment, τ fitted on the minival",
    "tau_norm": "joint + τ-norm, P fitted on the minival",
    "crt": "cRT: joint's backbone, classifier re-trained on class-balanced batches",
    "crt_prior": "cRT + logit adjustment, τ from the training prior",
    "la_loss": "logit-adjusted loss (τ = 1)",
    "la_loss_prior": "logit-adjusted loss + logit adjustment, τ from the training prior",
    "sqrt": "square-root batches",
    "sqrt_prior": "square-root batches + logit adjustment, τ from the training prior",
    "balanced": "class-balanced batches",
    "balanced_prior": "class-balanced batches + logit adjustment, τ from the training prior",
    "balanced_fit": "class-balanced batches + logit adjustment, τ fitted on the minival",
}
#: The P values τ-norm tries (0, the identity, is row 1).
TAU_NORM_POWERS = (0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class LongTailSetup:
    """The ablation's sizes and training options, with the preset's own (long-tailed) test.

    Attributes:
        base: The training and data options (:class:`benchmarks.ablation.Setup`; its ``test_per_class`` is None).
        balanced_per_class: The balanced test's quota: at most this many test images per class.
        crt_epochs: Epochs of classifier re-training.
        crt_lr_factor: Its learning rate as a share of ``base.lr``.
    """

    base: Setup
    balanced_per_class: int = 3
    crt_epochs: int = 3
    crt_lr_factor: float = 1.0


#: The full run: the ablation's data with the preset's test.
FULL = LongTailSetup(base=dataclasses.replace(ABLATION_FULL, test_per_class=None))
#: The smoke run (``--quick``, the test).
QUICK = LongTailSetup(base=dataclasses.replace(ABLATION_QUICK, test_per_class=None), crt_epochs=1)


def balanced_subset(expected: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` images of each class, drawn at random (sorted).

    Args:
        expected: Each test image's category id.
        per_class: The quota.
        seed: Seed of the draw.
    """
    rng = np.random.default_rng([seed, 19])
    expected = np.asarray(expected)
    chosen = []
    for category in np.unique(expected):
        where = np.flatnonzero(expected == category)
        chosen.append(rng.choice(where, size=min(per_class, len(where)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


@dataclasses.dataclass
class _Bench:
    """What every row of one run shares."""

    setup: LongTailSetup
    out: Path
    held_out: Any  # the release with the minival as val
    minival: Path
    test_ids: np.ndarray  # the solution's image ids
    test_expected: np.ndarray  # their category ids
    balanced: np.ndarray  # the balanced test's rows of the two above
    prior_counts: dict[int, int]  # train images per category id
    clock: _Clock


def _prepare(setup: LongTailSetup, out: Path) -> _Bench:
    from inatcomp.build import split_val
    from inatcomp.score.analysis import load_dataset_info
    from inatcomp.score.readers import read_solution

    clock = _Clock()
    release = _release(out / "data", setup.base)
    minival = out / "minival"
    split_val(release.val, minival, minival_frac=setup.base.minival_frac, seed=setup.base.data_seed)
    solution, info = read_solution(release.solution), load_dataset_info(release.root)
    balanced = balanced_subset(solution.expected, setup.balanced_per_class, seed=setup.base.data_seed)
    clock.lap(f"release: {len(solution.ids)} test images, {len(balanced)} in the balanced test")
    return _Bench(
        setup=setup, out=out, held_out=dataclasses.replace(release, val=minival / "minival.json"), minival=minival,
        test_ids=np.asarray(solution.ids), test_expected=np.asarray(solution.expected), balanced=balanced,
        prior_counts=dict(info.train_counts), clock=clock,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Scores:
    """One model's minival and test probabilities, rows aligned with the labels."""

    category_ids: np.ndarray
    minival: np.ndarray
    minival_expected: np.ndarray  # column of each minival row (-1: not in the head)
    test: np.ndarray


def _load(bench: _Bench, preds: dict[str, Path]) -> _Scores:
    from inatcomp.formats.predictions import expected_columns, index_of, open_predictions

    val, test = open_predictions(preds["val"]), open_predictions(preds["test"])
    rows = index_of(test.image_ids, bench.test_ids)
    if (rows < 0).any():
        raise ValueError(f"{preds['test']}: {int((rows < 0).sum())} test images not predicted")
    expected = expected_columns(val, bench.held_out.val, source=preds["val"]).columns
    return _Scores(
        category_ids=test.category_ids, minival=val.take_rows(np.arange(val.n_images)).astype(np.float32),
        minival_expected=np.asarray(expected), test=test.take_rows(rows).astype(np.float32),
    )  # fmt: skip


def _prior(bench: _Bench, category_ids: np.ndarray) -> Any:
    from inatcomp.predict.longtail import ClassPrior

    counts = np.array([bench.prior_counts.get(int(c), 0) for c in category_ids], dtype=np.int64)
    return ClassPrior(counts=counts, source="train")


def _test_errors(bench: _Bench, scores: _Scores, probs: np.ndarray, test: str) -> dict[str, float]:
    from inatcomp.formats.predictions import top_k_columns
    from inatcomp.score.metric import top_k_error

    rows = bench.balanced if test == "bal" else np.arange(len(bench.test_ids))
    ranked = scores.category_ids[top_k_columns(probs[rows], 3)]
    expected = bench.test_expected[rows]
    return {
        f"{test}_top1_error": top_k_error(ranked, expected, 1),
        f"{test}_top3_error": top_k_error(ranked, expected, 3),
    }


def _target(test: str) -> str:
    """The distribution τ and P are fitted for: the balanced test is val's (balanced), the other train's."""
    return "val" if test == "bal" else "train"


def _minival_error(bench: _Bench, scores: _Scores, probs: np.ndarray, test: str) -> float:
    """The minival top-1 error weighted for the test's distribution (``predict.longtail.target_weights``)."""
    from inatcomp.predict.longtail import target_weights

    weights = target_weights(scores.minival_expected, prior=_prior(bench, scores.category_ids), target=_target(test))
    wrong = probs.argmax(axis=1) != scores.minival_expected
    return float(weights[wrong].sum() / weights.sum())


def _as_trained(bench: _Bench, scores: _Scores) -> dict[str, float]:
    out: dict[str, float] = {}
    for test in TESTS:
        out.update(_test_errors(bench, scores, scores.test, test))
    return out


def _adjusted(bench: _Bench, scores: _Scores, *, trained_power: float | None = None) -> dict[str, float]:
    """Post-hoc logit adjustment towards each test: τ from the training prior's power, or fitted on the minival."""
    from inatcomp.predict.longtail import adjust_scores, target_weights, tau_grid, tau_towards

    prior = _prior(bench, scores.category_ids)
    out: dict[str, float] = {}
    for test in TESTS:
        if trained_power is not None:
            tau = tau_towards(trained_power=trained_power, target=_target(test))
        else:
            grid = tau_grid()
            errors = [
                _minival_error(bench, scores, adjust_scores(scores.minival, prior.log_prior, t), test) for t in grid
            ]
            tau = float(grid[np.lexsort((np.abs(grid), np.round(errors, 12)))[0]])
            weights = target_weights(scores.minival_expected, prior=prior, target=_target(test))
            out[f"{test}_effective_images"] = float(weights.sum() ** 2 / np.square(weights).sum())
        out.update(_test_errors(bench, scores, adjust_scores(scores.test, prior.log_prior, tau), test))
        out[f"{test}_param"] = tau
    return out


def _predict(bench: _Bench, checkpoint: Path, seed: int, name: str, tau_norm: float | None = None) -> dict[str, Path]:
    from inatcomp.predict.engine import predict

    out = bench.out / f"seed{seed}" / "predictions" / name
    return {
        part: predict(
            checkpoint=checkpoint, data=getattr(bench.held_out, part), images=bench.held_out.root, tta="center",
            out=out / f"{part}.pred", batch_size=bench.setup.base.batch_size, workers=0, tau_norm=tau_norm,
        )
        for part in ("val", "test")
    }  # fmt: skip


def _tau_norm(bench: _Bench, checkpoint: Path, seed: int, joint: _Scores) -> dict[str, float]:
    """τ-norm with P fitted on the minival for each test (P = 0: joint itself)."""
    candidates = {0.0: joint}
    for power in TAU_NORM_POWERS:
        candidates[power] = _load(bench, _predict(bench, checkpoint, seed, f"tau_norm_{power:g}", tau_norm=power))
    out: dict[str, float] = {}
    for test in TESTS:
        errors = {p: _minival_error(bench, s, s.minival, test) for p, s in candidates.items()}
        power = min(errors, key=lambda p: (round(errors[p], 12), p))
        out.update(_test_errors(bench, candidates[power], candidates[power].test, test))
        out[f"{test}_param"] = power
    return out


def _seed(bench: _Bench, seed: int) -> dict[str, dict[str, float]]:
    """Every row's metrics for one seed."""
    from inatcomp.pipeline import train_run
    from inatcomp.predict.longtail import SAMPLER_PRIOR_POWER

    base, out = bench.setup.base, bench.out / f"seed{seed}"
    options = _train_options(base, seed)
    joint_run = train_run(bench.held_out, out / "joint", **options)
    joint = _load(bench, _predict(bench, joint_run.run_dir, seed, "joint"))
    rows = {
        "joint": _as_trained(bench, joint), "joint_prior": _adjusted(bench, joint, trained_power=1.0),
        "joint_fit": _adjusted(bench, joint),
        "tau_norm": _tau_norm(bench, joint_run.run_dir / "best.safetensors", seed, joint),
    }  # fmt: skip
    bench.clock.lap(f"seed {seed}: joint, post-hoc adjustment, τ-norm")
    crt_run = train_run(
        bench.held_out, out / "crt", **{**options, "epochs": bench.setup.crt_epochs,
                                        "lr": base.lr * bench.setup.crt_lr_factor, "warmup_epochs": 0},
        init=joint_run.run_dir / "best.safetensors", stage="classifier", reset_head=True, sampler="class-balanced",
    )  # fmt: skip
    crt = _load(bench, _predict(bench, crt_run.run_dir, seed, "crt"))
    rows["crt"], rows["crt_prior"] = _as_trained(bench, crt), _adjusted(bench, crt, trained_power=0.0)
    bench.clock.lap(f"seed {seed}: cRT")
    trained = (
        ("la_loss", {"loss": "logit-adjusted"}, 0.0),
        ("sqrt", {"sampler": "sqrt"}, SAMPLER_PRIOR_POWER["sqrt"]),
        ("balanced", {"sampler": "class-balanced"}, SAMPLER_PRIOR_POWER["class-balanced"]),
    )
    for key, extra, power in trained:
        run = train_run(bench.held_out, out / key, **{**options, **extra})
        scores = _load(bench, _predict(bench, run.run_dir, seed, key))
        rows[key], rows[f"{key}_prior"] = _as_trained(bench, scores), _adjusted(bench, scores, trained_power=power)
        if key == "balanced":
            rows["balanced_fit"] = _adjusted(bench, scores)
        bench.clock.lap(f"seed {seed}: {ROWS[key]}")
    return rows


def run(
    *, quick: bool = False, seeds: int | None = None, out: str | os.PathLike | None = None,
    setup: LongTailSetup | None = None,
) -> list[Row]:  # fmt: skip
    """Run every row for every seed; returns the rows (:data:`ROWS`, in order).

    Args:
        quick: The tiny :data:`QUICK` setup instead of :data:`FULL`.
        seeds: Override the number of training seeds.
        out: Folder for the release, runs and predictions (default ``runs/longtail`` or ``runs/longtail-quick``).
        setup: A setup of one's own (overrides ``quick``).
    """
    import torch

    from inatcomp.fileio import write_json

    setup = setup or (QUICK if quick else FULL)
    if seeds is not None:
        setup = dataclasses.replace(setup, base=dataclasses.replace(setup.base, seeds=seeds))
    if setup.base.seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {setup.base.seeds}")
    out = Path(out or ("runs/longtail-quick" if quick else "runs/longtail"))
    threads = torch.get_num_threads()
    torch.set_num_threads(setup.base.threads)
    try:
        bench = _prepare(setup, out)
        rows = [Row("longtail", key) for key in ROWS]
        for seed in range(setup.base.seeds):
            measured = _seed(bench, seed)
            for row in rows:
                row.add(measured[row.name])
        facts = {
            "setup": dataclasses.asdict(setup), "test_images": len(bench.test_ids),
            "test_classes": len(np.unique(bench.test_expected)), "balanced_images": len(bench.balanced),
            "test_share_top3_classes": _top3_share(bench.test_expected),
            "balanced_share_top3_classes": _top3_share(bench.test_expected[bench.balanced]),
        }  # fmt: skip
        write_json(out / "facts.json", facts)
        write_json(out / "rows.json", [dataclasses.asdict(r) for r in rows], indent=2)
        return rows
    finally:
        torch.set_num_threads(threads)


def _top3_share(expected: np.ndarray) -> float:
    _, counts = np.unique(expected, return_counts=True)
    return float(np.sort(counts)[::-1][:3].sum() / max(len(expected), 1))


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def _paired(row: Row, joint: Row, key: str) -> str:
    """Row minus joint, paired by seed: the mean and for how many seeds the error went down."""
    deltas = [a - b for a, b in zip(row.values.get(key, []), joint.values.get(key, [])) if a is not None]
    if not deltas:
        return "–"
    return f"{statistics.fmean(deltas):+.3f} ({sum(d < 0 for d in deltas)}/{len(deltas)} lower)"


def markdown(rows: Sequence[Row], *, facts: dict[str, Any], seconds: float | None = None) -> str:
    """The generated block: the setup, the errors on both tests, the paired changes from joint."""
    setup = facts["setup"]
    base = setup["base"]
    seeds = max((len(v) for r in rows for v in r.values.values()), default=0)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        BEGIN, "", "## Long-tail tools on a long-tailed and a balanced test", "",
        f"- Data: the ablation's synthetic export ({base['species']} species, {base['photos']:,} photos, seed "
        f"{base['data_seed']}) built with the `inat2018` preset's own test (⅓ × train, whole observers): "
        f"{facts['test_images']} test images over {facts['test_classes']} classes, the 3 biggest holding "
        f"{facts['test_share_top3_classes']:.0%} of them. Balanced test: at most {setup['balanced_per_class']} of "
        f"each class drawn from it, {facts['balanced_images']} images (3 biggest classes "
        f"{facts['balanced_share_top3_classes']:.0%}). τ and P fitted on the minival (balanced) for each test: as "
        "is for the balanced test, each image weighted by π_train / π_minival for the long-tailed one.",
        f"- Models: `{base['model']}` from `--pretrained {base['pretrained']}`, {base['img_size']} px, "
        f"{base['epochs']} epochs, the ablation's options; cRT: {setup['crt_epochs']} epoch(s) at lr "
        f"{base['lr'] * setup['crt_lr_factor']:g}, head re-initialised, backbone and its BatchNorm statistics "
        "frozen. Centre crop, no TTA.",
        f"- Seeds: {seeds}; ± is the standard deviation over them. Machine: {machine}, {base['threads']} torch "
        f"thread(s). Date: {datetime.date.today().isoformat()}."
        + (f" Wall time: {seconds / 60:.1f} min." if seconds is not None else ""),
        "",
    ]  # fmt: skip
    keys = [f"{t}_top{k}_error" for t in TESTS for k in (1, 3)]
    titles = [f"{TESTS[t].split(' (')[0]} top-{k} error" for t in TESTS for k in (1, 3)]
    lines += [
        "| row | " + " | ".join(titles) + " | τ or P (long-tailed / balanced) |",
        "| --- |" + " ---: |" * (len(keys) + 1),
    ]
    for row in rows:
        params = "–"
        if "lt_param" in row.values:
            params = f"{row.mean('lt_param'):.2g} / {row.mean('bal_param'):.2g}"
        lines.append(f"| {ROWS[row.name]} | " + " | ".join(_cell(row, k, 3) for k in keys) + f" | {params} |")
    joint = rows[0]
    lines += [
        "",
        "Change from joint, paired by seed (mean, and for how many seeds the error went down):",
        "",
        "| row | Δ long-tailed top-1 | Δ long-tailed top-3 | Δ balanced top-1 | Δ balanced top-3 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows[1:]:
        lines.append(f"| {ROWS[row.name]} | " + " | ".join(_paired(row, joint, k) for k in keys) + " |")
    fitted = next((r for r in rows if "lt_effective_images" in r.values), None)
    if fitted is not None:
        lines += [
            "",
            f"A fitted τ is chosen on the minival, which counts as {fitted.mean('bal_effective_images'):.0f} images "
            f"for the balanced test but, weighted to train's distribution, as {fitted.mean('lt_effective_images'):.0f} "
            "for the long-tailed one (Kish's effective sample size: its few images of head classes carry most of the "
            "weight).",
        ]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | os.PathLike, text: str) -> Path:
    """Replace the block in ``path`` (appended after the rest when the file has none)."""
    from inatcomp.fileio import replace_generated_block, write_atomic

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN not in old or END not in old:
        return write_atomic(path, (old.rstrip("\n") + "\n\n" if old else "") + text)
    return replace_generated_block(path, "longtail", text.strip().removeprefix(BEGIN).removesuffix(END))


def get_args_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(prog="longtail", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--write",
        action="append",
        default=[],
        help="Markdown file whose longtail block to rewrite (ABLATION.md, README.md; repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed: a smoke run")
    parser.add_argument("--seeds", type=int, help=f"training seeds (default {FULL.base.seeds})")
    parser.add_argument("--out", help="folder for the data and runs (default runs/longtail or runs/longtail-quick)")
    return parser


def main(argv: list[str] | None = None) -> list[Row]:
    """Run, log the block, and with ``--write`` rewrite it in the Markdown file; returns the rows."""
    from benchmarks.common import run_and_write

    args = get_args_parser().parse_args(argv)
    return run_and_write(args, name="longtail", run=run, markdown=markdown, write_markdown=write_markdown)


if __name__ == "__main__":
    main()
