"""The main job on a synthetic export: what ``make demo`` runs.

synth → validate → build (inat2018 preset) → validate the release → split val into val and minival (by
observer) → train a baseline (plain cross-entropy, random batches) and two small models with the long-tail
recipe (class-balanced batches, label and taxonomy-aware smoothing) → fine-tune each recipe model on the
rest of val → predict minival and test with flip TTA → ensemble the two → submissions, each validated against
the test file → score them against the hidden solution (a Markdown report with plots for the ensemble) → a
leaderboard of the demo's submissions with the organizer's sample submission as the floor.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from inatcomp.build import build_dataset, release_names, split_val
from inatcomp.formats import validate_file
from inatcomp.pipeline import ensemble_run, find_release, predict_run, submit, train_run
from inatcomp.report import build_leaderboard, leaderboard_markdown, write_leaderboard, write_score_report
from inatcomp.scoring import score_file, score_predictions
from inatcomp.splits import Preset, rules_for
from inatcomp.synth import EXPORT_TABLES, SynthConfig, write_export

__all__ = ["run_demo"]

_logger = logging.getLogger(__name__)

#: The long-tail recipe of the demo's two models (the 2018 runner-up's ingredients), on top of the baseline.
RECIPE = {"sampler": "class-balanced", "label_smoothing": 0.1, "taxonomy_smoothing": True}
#: The demo's members: name → model and seed (the same small model twice: the CPU budget of `make demo`).
MEMBERS = {"recipe_a": ("resnet10t", 0), "recipe_b": ("resnet10t", 1)}


def run_demo(
    out: str | Path, *, species: int = 300, photos: int = 20000, seed: int = 0, epochs: int = 12, img_size: int = 64
) -> int:
    """Run every stage that exists on a synthetic export under ``out``; returns a process exit code."""
    out = Path(out)
    timings: list[tuple[str, float, str]] = []

    start = time.perf_counter()
    export = out / "export"
    counts = write_export(export, SynthConfig(species=species, photos=photos, seed=seed))
    timings.append(("synth", time.perf_counter() - start, str(export)))

    start = time.perf_counter()
    problems = []
    for table in EXPORT_TABLES:
        problems += validate_file(export / f"{table}.csv")
    for problem in problems:
        _logger.error("%s", problem)
    timings.append(("validate", time.perf_counter() - start, f"{len(problems)} problems"))

    start = time.perf_counter()
    release = out / "release"
    rules = rules_for(Preset.INAT2018)
    built = build_dataset(export, release, rules=rules, seed=seed, overwrite=True)
    timings.append(("build", time.perf_counter() - start, f"{release}: {built.classes} classes, {built.images}"))

    start = time.perf_counter()
    names = release_names(rules)
    release_files = [release / names[k] for k in names if not k.endswith("_dir")]
    release_files += [release / "categories.json", release / "solution.csv", release / "sample_submission.csv"]
    release_problems = [p for path in release_files for p in validate_file(path)]
    for problem in release_problems:
        _logger.error("%s", problem)
    problems += release_problems
    timings.append(("validate", time.perf_counter() - start, f"{len(release_problems)} problems in the release"))

    start = time.perf_counter()
    split_val(release / names["val"], out / "minival", minival_frac=0.25, seed=seed)
    held_out = dataclasses.replace(find_release(release, preset=Preset.INAT2018), val=out / "minival" / "minival.json")
    timings.append(("split-val", time.perf_counter() - start, f"{out / 'minival'}: val.json + minival.json"))

    common: dict[str, Any] = {
        "img_size": img_size, "epochs": epochs, "batch_size": 64, "workers": 0, "lr": 0.05, "schedule": "cosine",
        "warmup_epochs": 0.5, "seed": seed, "log_every": 0, "crop_scale": [0.35, 1.0],
    }  # fmt: skip
    runs = {}
    start = time.perf_counter()
    runs["baseline"] = train_run(held_out, out / "runs" / "baseline", model="resnet10t", **common)
    timings.append(("train", time.perf_counter() - start, _minival_text(runs["baseline"], "baseline, plain CE")))
    for name, (model, member_seed) in MEMBERS.items():
        start = time.perf_counter()
        options = {**common, **RECIPE, "seed": seed + member_seed}
        runs[name] = train_run(held_out, out / "runs" / name, model=model, **options)
        timings.append(("train", time.perf_counter() - start, _minival_text(runs[name], f"{name}, {model}")))
        start = time.perf_counter()
        runs[name] = train_run(
            held_out, out / "runs" / f"{name}_valft", init=runs[name].run_dir / "best.safetensors",
            train=out / "minival" / "val.json", categories_from="init", epochs=max(1, epochs // 5), lr=0.005,
            schedule="cosine", workers=0, seed=seed + member_seed, log_every=0,
            freeze_norm_stats=True, **{k: RECIPE[k] for k in ("label_smoothing", "taxonomy_smoothing")},
        )  # fmt: skip
        timings.append(("fine-tune", time.perf_counter() - start, _minival_text(runs[name], f"{name} on val")))

    start = time.perf_counter()
    predictions = {}
    for name, run in runs.items():
        predictions[name], _ = predict_run(run.run_dir, held_out, out / "predictions" / name, tta="flip")
    members = {part: [predictions[m][part] for m in MEMBERS] for part in ("val", "test")}
    predictions["ensemble"], _ = ensemble_run(members, held_out, out / "predictions" / "ensemble")
    scores = {name: score_predictions(p["val"], held_out.val, k=3) for name, p in predictions.items()}
    summary = ", ".join(f"{name} {score['top1_error']:.3f}" for name, score in scores.items())
    timings.append(
        ("predict", time.perf_counter() - start, f"{out / 'predictions'} (flip TTA); minival top-1 error: {summary}")
    )

    start = time.perf_counter()
    submissions = out / "submissions"
    baseline = submissions / "sample_submission.csv"
    baseline.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release / "sample_submission.csv", baseline)
    written = [baseline]
    for name, preds in predictions.items():
        written.append(submit(held_out, preds["test"], submissions / f"{name}.csv")["submission"])
    timings.append(("submit", time.perf_counter() - start, f"{submissions}: {len(written)} submissions, all valid"))

    start = time.perf_counter()
    result = score_file(submissions / "ensemble.csv", release / "solution.csv", dataset=release)
    write_score_report(result, out / "report")
    entries = build_leaderboard(written, release / "solution.csv")
    write_leaderboard(entries, out / "leaderboard")
    sys.stdout.write(leaderboard_markdown(entries))
    timings.append(("score", time.perf_counter() - start, f"{out / 'report'}, {out / 'leaderboard'}"))

    _logger.info("export: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    _logger.info("%-10s %8s  %s", "stage", "seconds", "output")
    for stage, seconds, where in timings:
        _logger.info("%-10s %8.1f  %s", stage, seconds, where)
    return 1 if problems else 0


def _minival_text(run: Any, what: str) -> str:
    last = run.metrics[-1]
    return (
        f"{run.run_dir} ({what}): minival top-1 error {last['val_top1_error']:.3f}, top-3 {last['val_top3_error']:.3f}"
    )
