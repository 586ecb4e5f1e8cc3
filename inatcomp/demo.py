"""The main job on a synthetic export: what ``make demo`` runs.

Today: synth → validate → build (inat2018 preset) → validate the release → train a small model with the
long-tail recipe → predict val and test with flip TTA → submission → validate it against the test file →
score against the hidden solution (report with per-supercategory tables and plots) → a leaderboard of the
demo's submissions (the organizer's sample submission as the floor). Later stages (a second model,
val fine-tuning, ensembles) are appended as they land, so the demo always shows the whole path that works.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from inatcomp.build import build_dataset, release_names
from inatcomp.formats import validate_file
from inatcomp.predict import predict, score_predictions
from inatcomp.report import build_leaderboard, leaderboard_markdown, write_leaderboard, write_score_report
from inatcomp.scoring import score_file
from inatcomp.splits import Preset, rules_for
from inatcomp.submission import validate_submission, write_submission
from inatcomp.synth import EXPORT_TABLES, SynthConfig, write_export
from inatcomp.train import resolve_config, train

__all__ = ["run_demo"]

_logger = logging.getLogger(__name__)


def run_demo(
    out: str | Path, *, species: int = 300, photos: int = 20000, seed: int = 0, epochs: int = 15, img_size: int = 64
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
    config = resolve_config(
        overrides={
            "train": str(release / names["train"]), "val": str(release / names["val"]), "images": str(release),
            "out": str(out / "runs" / "recipe"), "model": "resnet10t", "img_size": img_size, "epochs": epochs,
            "batch_size": 64, "workers": 0, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5,
            "sampler": "class-balanced", "label_smoothing": 0.1, "taxonomy_smoothing": True, "seed": seed,
            "log_every": 0, "crop_scale": [0.35, 1.0],
        }
    )  # fmt: skip
    trained = train(config)
    last = trained.metrics[-1]
    timings.append(
        (
            "train",
            time.perf_counter() - start,
            f"{trained.run_dir}: val top-1 error {last['val_top1_error']:.3f}, top-3 {last['val_top3_error']:.3f}",
        )
    )

    start = time.perf_counter()
    predictions = {}
    for part in ("val", "test"):
        predictions[part] = predict(
            checkpoint=trained.run_dir, data=release / names[part], images=release, tta="flip",
            out=out / "predictions" / f"recipe_{part}.pred", batch_size=64,
        )  # fmt: skip
    val_score = score_predictions(predictions["val"], release / names["val"], k=3)
    summary = f"val top-1 error {val_score['top1_error']:.3f}, top-3 {val_score['top3_error']:.3f}"
    timings.append(("predict", time.perf_counter() - start, f"{out / 'predictions'} (flip TTA): {summary}"))

    start = time.perf_counter()
    submissions = out / "submissions"
    submission = write_submission(predictions["test"], format="inat2018", out=submissions / "recipe.csv")
    baseline = submissions / "sample_submission.csv"
    baseline.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release / "sample_submission.csv", baseline)
    submission_problems = validate_submission(submission, release / names["test"], format="inat2018")
    for problem in submission_problems:
        _logger.error("%s", problem)
    problems += submission_problems
    timings.append(("submit", time.perf_counter() - start, f"{submission}: {len(submission_problems)} problems"))

    start = time.perf_counter()
    result = score_file(submission, release / "solution.csv", dataset=release)
    write_score_report(result, out / "report")
    entries = build_leaderboard([baseline, submission], release / "solution.csv")
    write_leaderboard(entries, out / "leaderboard")
    sys.stdout.write(leaderboard_markdown(entries))
    timings.append(("score", time.perf_counter() - start, f"{out / 'report'}, {out / 'leaderboard'}"))

    _logger.info("export: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    _logger.info("%-10s %8s  %s", "stage", "seconds", "output")
    for stage, seconds, where in timings:
        _logger.info("%-10s %8.1f  %s", stage, seconds, where)
    return 1 if problems else 0
