"""The main job on a synthetic export: what ``make demo`` runs.

synth → validate → build (inat2018 preset) → validate the release → split val into val and minival (by
observer) → train a baseline (plain cross-entropy, random batches), a model with class-balanced batches and
smoothing, and two models with the recipe (square-root batches, label and taxonomy-aware smoothing) → fine-tune
each recipe model on the rest of val → predict minival and test with flip TTA → ensemble the two → logit-adjust
the ensemble and the balanced model towards the test's prior, which the preset publishes (its test follows
train's long tail): τ from the prior each trained under (:func:`inatcomp.predict.longtail.tau_towards`) → submissions,
each validated against the test file → score them against the hidden solution (a Markdown report with plots for
the recipe) → a leaderboard of the demo's submissions with the organizer's sample submission as the floor.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from inatcomp.build.layout import release_names
from inatcomp.build.minival import split_val
from inatcomp.build.release import build_dataset
from inatcomp.build.releases import find_release
from inatcomp.build.rules import Preset, rules_for
from inatcomp.fileio import replace_generated_block, write_atomic
from inatcomp.formats.predictions import open_predictions
from inatcomp.formats.validate import validate_file
from inatcomp.pipeline import ensemble_run, predict_run, submit
from inatcomp.predict.longtail import SAMPLER_PRIOR_POWER, TargetPrior, adjust_predictions, class_prior, tau_towards
from inatcomp.score.leaderboard import build_leaderboard, leaderboard_markdown, write_leaderboard
from inatcomp.score.report import write_score_report
from inatcomp.score.scoring import score_file, score_predictions
from inatcomp.train.runs import train_run
from inatcomp.world.synth import SynthConfig, write_export
from inatcomp.world.tables import EXPORT_TABLES

__all__ = ["DEMO_EPOCHS", "run_demo", "summary_markdown"]

_logger = logging.getLogger(__name__)

#: The recipe of the demo's two members: square-root batches (between the instance-balanced representation and
#: class-balanced batches) with label and taxonomy-aware smoothing; the logit adjustment below moves the ensemble
#: to the test's prior (a test that follows train rewards the head classes that balanced batches give away).
RECIPE = {"sampler": "sqrt", "label_smoothing": 0.1, "taxonomy_smoothing": True}
#: The class-balanced model shown beside it (the 2018 runner-up's batches), unadjusted and adjusted.
BALANCED = {"sampler": "class-balanced", "label_smoothing": 0.1, "taxonomy_smoothing": True}
#: The demo's members: name → model and seed (the same small model twice: the CPU budget of `make demo`).
MEMBERS = {"recipe_a": ("resnet10t", 0), "recipe_b": ("resnet10t", 1)}
#: The class distribution the organizer publishes for the test: the inat2018 preset's test is a share of train
#: taken by whole observers, so it follows train's long tail.
TEST_PRIOR = TargetPrior.TRAIN
#: The logit-adjusted submissions: name → the predictions they adjust and the sampler they trained under; τ moves
#: that sampler's prior to TEST_PRIOR. Not fitted: the minival is balanced, and weighted to train's distribution
#: its 126 images count as about 12 (their effective sample size), too few to choose τ (README, long-tail tools).
ADJUSTED = {"balanced_adjusted": ("balanced", BALANCED["sampler"]), "recipe": ("ensemble", RECIPE["sampler"])}
#: Training epochs of each model. Three fine-tune the shipped backbone far enough to show every effect above, and
#: keep a first `make demo` with its install within 8 minutes on 2 cores: training is nearly all of the demo's work
#: (4 models × epochs × 3,604 train images: about 43,000 image-epochs at 3, against 5,728 image-views predicted),
#: and 6 epochs (about 86,000 image-epochs) took 11 minutes with the install on a fresh clone.
DEMO_EPOCHS = 3


@dataclasses.dataclass
class _Stages:
    """The stages run so far: name, seconds and where their outputs are (the table the demo ends with)."""

    rows: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
    #: The demo's work, which a busy machine does not change: images trained on, summed over epochs and models,
    #: and image-views predicted (flip TTA: two per image).
    trained: int = 0
    predicted: int = 0
    _start: float = dataclasses.field(default_factory=time.perf_counter)

    def done(self, stage: str, where: str) -> None:
        """Record a stage that ended now (its time counts from the previous one's end)."""
        now = time.perf_counter()
        self.rows.append((stage, now - self._start, where))
        self._start = now


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What the demo measured, for its closing table and the README's generated block."""

    classes: int
    minival: dict[str, dict[str, Any]]
    board: list[Any]
    trained: int = 0
    predicted: int = 0


def run_demo(
    out: str | Path,
    *,
    species: int = 300,
    photos: int = 20000,
    seed: int = 0,
    epochs: int = DEMO_EPOCHS,
    img_size: int = 64,
    pretrained: str = "synth",
    readme: str | Path | None = None,
    started_at: float | None = None,
) -> int:
    """Run every stage that exists on a synthetic export under ``out``; returns a process exit code.

    Args:
        pretrained: Where the three models start (``--pretrained``): by default the backbone the package ships,
            pretrained on a synthetic world no demo species is in, as every published iNat result fine-tunes a
            pretrained network; ``"none"`` trains from scratch.
        readme: A Markdown file whose ``demo:begin``/``demo:end`` block gets this run's figures (``make demo``
            passes the README), besides ``out/summary.md`` which every run writes.
        started_at: When the whole job began, as a Unix time: ``make demo`` passes the moment it started, before
            ``make install``, so that the summary gives the time a first run takes with the install. ``None``: the
            demo's own time only.
    """
    out = Path(out)
    load = os.getloadavg()[0]
    before = None if started_at is None else max(0.0, time.time() - started_at)  # the install, when make ran it
    started = time.perf_counter()
    stages = _Stages()
    counts, problems = _export(out / "export", species=species, photos=photos, seed=seed, stages=stages)
    release, classes, release_problems = _release(out / "export", out / "release", seed=seed, stages=stages)
    problems += release_problems
    split_val(release / release_names(rules_for(Preset.INAT2018))["val"], out / "minival", minival_frac=0.25, seed=seed)
    held_out = dataclasses.replace(find_release(release, preset=Preset.INAT2018), val=out / "minival" / "minival.json")
    stages.done("split-val", f"{out / 'minival'}: val.json + minival.json")
    runs = _train_models(
        held_out, out, seed=seed, epochs=epochs, img_size=img_size, pretrained=pretrained, stages=stages
    )
    predictions, minival = _predict_models(runs, held_out, out, stages=stages)
    board = _submit_and_score(predictions, held_out, release, out, stages=stages)
    _logger.info("export: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    _logger.info("%-10s %8s  %s", "stage", "seconds", "output")
    for stage, seconds, where in stages.rows:
        _logger.info("%-10s %8.1f  %s", stage, seconds, where)
    _logger.info("work: %s image-epochs trained, %s image-views predicted", f"{stages.trained:,}",
                 f"{stages.predicted:,}")  # fmt: skip
    block = summary_markdown(
        _Outcome(classes=classes, minival=minival, board=board, trained=stages.trained, predicted=stages.predicted),
        species=species, photos=photos, epochs=epochs, pretrained=pretrained, seconds=time.perf_counter() - started,
        load=load, before=before,
    )  # fmt: skip
    write_atomic(out / "summary.md", block)
    if readme is not None:
        replace_generated_block(readme, "demo", block)
        _logger.info("wrote this run's figures into %s", readme)
    return 1 if problems else 0


def _export(folder: Path, *, species: int, photos: int, seed: int, stages: _Stages) -> tuple[dict, list]:
    """Generate the synthetic export and validate its tables."""
    counts = write_export(folder, SynthConfig(species=species, photos=photos, seed=seed))
    stages.done("synth", str(folder))
    problems = [problem for table in EXPORT_TABLES for problem in validate_file(folder / f"{table}.csv")]
    for problem in problems:
        _logger.error("%s", problem)
    stages.done("validate", f"{len(problems)} problems")
    return counts, problems


def _release(export: Path, release: Path, *, seed: int, stages: _Stages) -> tuple[Path, int, list]:
    """Build the inat2018 release and validate every file it holds."""
    rules = rules_for(Preset.INAT2018)
    built = build_dataset(export, release, rules=rules, seed=seed, overwrite=True)
    stages.done("build", f"{release}: {built.classes} classes, {built.images}")
    names = release_names(rules)
    files = [release / names[k] for k in names if not k.endswith("_dir")]
    files += [release / "categories.json", release / "solution.csv", release / "sample_submission.csv"]
    problems = [p for path in files for p in validate_file(path)]
    for problem in problems:
        _logger.error("%s", problem)
    stages.done("validate", f"{len(problems)} problems in the release")
    return release, built.classes, problems


def _train_models(
    held_out: Any, out: Path, *, seed: int, epochs: int, img_size: int, pretrained: str, stages: _Stages
) -> dict:
    """The baseline, then each recipe member and its fine-tuning on the rest of val."""
    common: dict[str, Any] = {
        "pretrained": pretrained, "img_size": img_size, "epochs": epochs, "batch_size": 64, "workers": 0, "lr": 0.05,
        "schedule": "cosine", "warmup_epochs": 0.5, "seed": seed, "log_every": 0, "crop_scale": [0.35, 1.0],
    }  # fmt: skip
    runs = {"baseline": train_run(held_out, out / "runs" / "baseline", model="resnet10t", **common)}
    stages.done("train", _minival_text(runs["baseline"], "baseline, plain CE", stages))
    runs["balanced"] = train_run(held_out, out / "runs" / "balanced", model="resnet10t", **common, **BALANCED)
    stages.done("train", _minival_text(runs["balanced"], "class-balanced batches, smoothing", stages))
    for name, (model, member_seed) in MEMBERS.items():
        options = {**common, **RECIPE, "seed": seed + member_seed}
        runs[name] = train_run(held_out, out / "runs" / name, model=model, **options)
        stages.done("train", _minival_text(runs[name], f"{name}, {model}", stages))
        runs[name] = train_run(
            held_out, out / "runs" / f"{name}_valft", init=runs[name].run_dir / "best.safetensors",
            train=out / "minival" / "val.json", categories_from="init", epochs=max(1, epochs // 5), lr=0.005,
            schedule="cosine", workers=0, seed=seed + member_seed, log_every=0,
            freeze_norm_stats=True, **{k: RECIPE[k] for k in ("label_smoothing", "taxonomy_smoothing")},
        )  # fmt: skip
        stages.done("fine-tune", _minival_text(runs[name], f"{name} on val", stages))
    return runs


def _predict_models(runs: dict, held_out: Any, out: Path, *, stages: _Stages) -> tuple[dict, dict]:
    """Flip-TTA predictions of minival and test for every model and the ensemble; their minival scores."""
    predictions = {}
    for name, run in runs.items():
        predictions[name], _ = predict_run(run.run_dir, held_out, out / "predictions" / name, tta="flip")
        stages.predicted += 2 * sum(open_predictions(path).n_images for path in predictions[name].values())
    members = {part: [predictions[m][part] for m in MEMBERS] for part in ("val", "test")}
    predictions["ensemble"], _ = ensemble_run(members, held_out, out / "predictions" / "ensemble")
    prior = class_prior(held_out.train, open_predictions(predictions["ensemble"]["test"]).category_ids)
    taus = {}
    for name, (source, sampler) in ADJUSTED.items():
        tau = taus[name] = tau_towards(trained_power=SAMPLER_PRIOR_POWER[sampler], target=TEST_PRIOR)
        folder = out / "predictions" / name
        # The prior is train's: a val-fine-tuned checkpoint's own class counts are val's.
        predictions[name] = {
            part: adjust_predictions(path, tau=tau, prior=prior, out=folder / f"{part}.pred")
            for part, path in predictions[source].items()
        }
    scores = {name: score_predictions(p["val"], held_out.val, k=3) for name, p in predictions.items()}
    summary = ", ".join(f"{name} {score['top1_error']:.3f}" for name, score in scores.items())
    adjusted = ", ".join(f"{name} τ = {tau:g}" for name, tau in taus.items())
    stages.done("predict", f"{out / 'predictions'} (flip TTA; {adjusted}); minival top-1 error: {summary}")
    for name, tau in taus.items():
        scores[name]["tau"] = tau
    return predictions, scores


def _submit_and_score(predictions: dict, held_out: Any, release: Path, out: Path, *, stages: _Stages) -> list:
    """Validated submissions of every model, the ensemble's score report and the leaderboard."""
    submissions = out / "submissions"
    baseline = submissions / "sample_submission.csv"
    baseline.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release / "sample_submission.csv", baseline)
    written = [baseline]
    for name, preds in predictions.items():
        written.append(submit(held_out, preds["test"], submissions / f"{name}.csv")["submission"])
    stages.done("submit", f"{submissions}: {len(written)} submissions, all valid")
    result = score_file(submissions / "recipe.csv", release / "solution.csv", dataset=release)
    write_score_report(result, out / "report")
    entries = build_leaderboard(written, release / "solution.csv")
    write_leaderboard(entries, out / "leaderboard")
    sys.stdout.write(leaderboard_markdown(entries))
    stages.done("score", f"{out / 'report'}, {out / 'leaderboard'}")
    return entries


def summary_markdown(
    outcome: _Outcome,
    *,
    species: int,
    photos: int,
    epochs: int,
    pretrained: str,
    seconds: float,
    load: float,
    before: float | None = None,
) -> str:
    """The run's figures as Markdown: machine, date, wall time, minival errors, the leaderboard.

    Args:
        seconds: The demo's own wall time.
        before: Seconds between the job's start and the demo's (``make demo``'s install), when known.
    """
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    if before is None:
        took = f"{_minutes(seconds)} for the demo itself"
    else:
        took = f"{_minutes(before + seconds)} for `make demo`: {_minutes(before)} install, {_minutes(seconds)} demo"
    lines = [
        f"Last run: {datetime.date.today().isoformat()} on {machine} (1-minute load average {load:.1f} at the "
        f"start), {took}: {species} species, {photos:,} photos generated, "
        f"{outcome.classes} classes built, {epochs} epochs per model from {_start_text(pretrained)}; "
        f"{outcome.trained:,} image-epochs trained, {outcome.predicted:,} image-views predicted.",
        "",
        "| model | minival top-1 error | minival top-3 error | logit adjustment τ (towards train's prior) |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {score['top1_error']:.3f} | {score['top3_error']:.3f} | "
            f"{format(score['tau'], 'g') if 'tau' in score else '–'} |"
            for name, score in outcome.minival.items()
        ),
        "",
        leaderboard_markdown(outcome.board).rstrip("\n"),
        "",
    ]
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    """``N min M s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _start_text(pretrained: str) -> str:
    """Where the models started, in the summary's words."""
    if pretrained == "synth":
        return "the shipped synthetic-world backbone (--pretrained synth)"
    return "scratch (--pretrained none)" if pretrained == "none" else f"--pretrained {pretrained}"


def _minival_text(run: Any, what: str, stages: _Stages) -> str:
    """A trained run's line in the stage table; adds the images it trained on to ``stages.trained``."""
    last = run.metrics[-1]
    # images/s × seconds: the images each epoch trained on (the metrics do not list the count itself).
    images = sum(round(m["train_images_per_s"] * m["train_seconds"]) for m in run.metrics)
    stages.trained += images
    return (
        f"{run.run_dir} ({what}): {images:,} image-epochs, minival top-1 error {last['val_top1_error']:.3f}, "
        f"top-3 {last['val_top3_error']:.3f}"
    )
