"""Ablation of the long-tail recipe on the synthetic benchmark: does each published technique help here too?

What it measures. One synthetic iNat2018-style release (``inatcomp.pipeline.synthetic_release``: a generated
export built with the photographer-isolated ``inat2018`` rules) and, for each training seed, the cumulative steps

1. plain cross-entropy, random batches;
2. + class-balanced batches (each draw picks a class uniformly, then one of its images);
3. + label smoothing (ε = 0.1);
4. + taxonomy-aware smoothing (the ε mass spread over genus siblings, the family and the rest);
5. + val fine-tuning: step 4's best checkpoint trained a few more epochs at a tenth of the learning rate on the
   val images minus a minival (``inatcomp.build.split_val``, by observer), as the 2018 winner did;
6. + test-time augmentation (a TTA preset instead of the centre crop);
7. + an ensemble: the mean probabilities of this seed's step-6 model and the next seed's (seeds taken in a
   cycle, so every pair is two independently trained models; with one seed a second one is trained);
8. + a geo prior: the ensemble's probabilities multiplied by a presence-only place-and-date prior
   (``inatcomp.predict.geoprior``) trained on the train split's locations.

Steps 1–4 train on the train split and choose their best epoch on the minival; nothing ever trains on the test
split. The release is built with a per-class test quota (``Setup.test_per_class``, the build's
``--test-per-class``): whole observers fill up to 10 test images per class, so the test weighs the classes about
alike, as iNat2018's val does and as the published long-tail results are measured (the preset's default test, a
third of train taken by whole observers, follows train's long tail: a few head classes fill most of it and reward
predicting them). Every row is scored on the test split against the release's hidden ``solution.csv``: the
submission is written and validated with ``inatcomp.pipeline.submit`` (the official top-1 and top-3 error), and
its top-1 labels go through ``inatcomp.score.analysis.analyse`` with the training-count bins ``0–9`` and ``≥ 10``: the
tail-class accuracy is the mean per-class top-1 accuracy of the test classes with fewer than 10 train images, the
genus share is the share of top-1 mistakes whose prediction is a sibling of the same genus, and the mean class
accuracy (all test classes weighing the same) shows what a class-balanced test would say. Each figure is the mean
over the seeds with its standard deviation; the change from the previous row is also given per seed (how many
seeds it lowered the error for), since all rows share one test set and are best compared pairwise. Two more views
of the same predictions: the test probabilities multiplied by the train class frequencies (the long-tailed prior
that balanced batches take out, put back: what a step would score on a test that follows train's tail), and the
error on the minival (up to 3 images per class, balanced like iNat2018's val; held out from training but used to
pick each run's best epoch).

A second, small table measures why builds isolate photographers: the same train + val images re-split at random
(the same number of val images per class, observers ignored) give a leaky split. The step-1 model is trained on
each split (the isolated one is step 1 itself) and scored from its last epoch on its own split's val and on the
isolated test: a leaky val looks better than the test says, since its photographers' camera styles, places and
preferred species were seen in training.

    python -m benchmarks.ablation --write ABLATION.md        # the full run (make ablation)
    python -m benchmarks.ablation --quick --out /tmp/abl     # a tiny smoke run (about two minutes)

``--write`` replaces the generated part of the Markdown file (between the ``ablation:begin``/``ablation:end``
markers) and keeps everything after it: the hand-written discussion.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FULL", "QUICK", "Row", "Setup", "leaky_split", "main", "markdown", "run", "write_markdown"]

_logger = logging.getLogger(__name__)

#: Training-count bins of the analysis: the first is the tail (fewer than 10 train images).
TAIL_BINS: tuple[tuple[int, int | None], ...] = ((0, 9), (10, None))
#: The markers around the generated part of the Markdown file.
BEGIN, END = "<!-- ablation:begin (written by benchmarks/ablation.py) -->", "<!-- ablation:end -->"
#: The metrics of the main table: key → (column title, decimals).
METRICS = {
    "top1_error": ("top-1 error", 3),
    "top3_error": ("top-3 error", 3),
    "tail_accuracy": ("tail-class accuracy (< 10 train)", 3),
    "same_genus_share": ("mistakes in the right genus", 3),
    "mean_class_accuracy": ("mean class accuracy", 3),
}
#: The metrics of the leak table.
LEAK_METRICS = {
    "val_top1_error": ("own val top-1 error", 3),
    "val_top3_error": ("own val top-3 error", 3),
    "test_top1_error": ("test top-1 error", 3),
    "test_top3_error": ("test top-3 error", 3),
    "val_images_seen_observer": ("val images whose photographer is in train", 2),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """The sizes and options of one ablation run.

    Attributes:
        species: Species of the synthetic export.
        photos: Photos of the export (the release keeps those that pass the inat2018 rules).
        image_size: Long side of the synthetic photos.
        data_seed: Seed of the export, the build, the minival and the leaky re-split (one release for all seeds).
        test_per_class: The build's per-class test quota (None: the preset's test, a share of train).
        seeds: Training seeds (each row is averaged over them).
        model: The timm model.
        pretrained: Where it starts (``--pretrained``): the backbone the package ships (``synth``, pretrained
            on a synthetic world no export species is in, the regime every competitor is in) or ``none``.
        img_size: Training and prediction crop (the shipped backbone was trained at 64 px).
        epochs: Epochs of steps 1–4 and of the leak runs.
        batch_size: Images per batch.
        optimizer: ``sgd`` or ``adamw``.
        lr: Peak learning rate (cosine schedule, half an epoch of warm-up).
        weight_decay: Weight decay.
        crop_scale: Random-resized-crop area range.
        max_steps_per_epoch: Cap on the steps of an epoch (None: a pass over the data).
        minival_frac: Share of val kept aside by observer as the minival (model choice), the rest fine-tunes.
        finetune_epochs: Epochs of val fine-tuning.
        finetune_lr_factor: Fine-tuning learning rate as a share of ``lr``.
        tta: The TTA preset of step 6 (:class:`inatcomp.predict.tta.TTAMode` value).
        prior_epochs: Epochs of the geo prior.
        prior_hidden: Width of the geo prior's layers.
        threads: Torch threads of this process (1: with other work on the machine more threads only spin).
        workers: Loader processes while training.
    """

    species: int = 150
    photos: int = 12000
    image_size: int = 96
    data_seed: int = 0
    test_per_class: int | None = 10
    seeds: int = 3
    model: str = "resnet10t"
    pretrained: str = "synth"
    img_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.35, 1.0)
    max_steps_per_epoch: int | None = None
    minival_frac: float = 0.25
    finetune_epochs: int = 4
    finetune_lr_factor: float = 0.1
    tta: str = "multiscale"
    prior_epochs: int = 30
    prior_hidden: int = 256
    threads: int = 1
    workers: int = 1

    def data_key(self) -> dict[str, Any]:
        """What the release depends on (a release built with the same key is reused)."""
        return {
            "species": self.species, "photos": self.photos, "image_size": self.image_size, "seed": self.data_seed,
            "test_per_class": self.test_per_class,
        }  # fmt: skip


#: The full run (``make ablation``).
FULL = Setup()
#: The smoke run (``--quick``, the test): a few species, one seed, two short epochs.
QUICK = Setup(
    species=40, photos=3000, image_size=64, img_size=32, seeds=1, epochs=2, max_steps_per_epoch=8, minival_frac=0.3,
    finetune_epochs=1, tta="ten-crop", prior_epochs=2, prior_hidden=32, workers=0,
)  # fmt: skip

#: The steps: key, row title, training options added to the previous step's.
STEPS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("plain", "plain cross-entropy (random batches)", {}),
    ("balanced", "+ class-balanced batches", {"sampler": "class-balanced"}),
    ("label_smoothing", "+ label smoothing 0.1", {"label_smoothing": 0.1}),
    ("taxonomy_smoothing", "+ taxonomy smoothing", {"taxonomy_smoothing": True}),
)
#: Row titles of every step, in order (the trained ones, then those built on step 4).
ROW_NAMES = tuple(title for _, title, _ in STEPS) + (
    "+ val fine-tuning",
    "+ TTA ({tta})",
    "+ ensemble of 2 seeds (mean prob)",
    "+ geo prior (place and date)",
)
LEAK_NAMES = ("isolated (the build's split)", "leaky (same images, re-split ignoring observers)")


@dataclasses.dataclass
class Row:
    """One row of a table: a value per seed for each metric.

    Attributes:
        table: ``ablation`` or ``leak``.
        name: The row title.
        values: Metric → one value per seed (None where undefined, e.g. no tail class in the test split).
    """

    table: str
    name: str
    values: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)

    def add(self, metrics: dict[str, float | None]) -> None:
        """Append one seed's metrics."""
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(None if value is None else float(value))

    def mean(self, key: str) -> float | None:
        """The mean over the seeds (None when no seed has a value)."""
        values = [v for v in self.values.get(key, []) if v is not None]
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        """The sample standard deviation over the seeds (0 with one seed)."""
        values = [v for v in self.values.get(key, []) if v is not None]
        return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


# ---------------------------------------------------------------------------------------------------------------------
# Data


def _release(out: Path, setup: Setup) -> Any:
    """The synthetic release, reused when ``out`` already holds one built with the same data key."""
    from inatcomp.fileio import read_json, write_json
    from inatcomp.pipeline import find_release, synthetic_release

    stamp = out / "ablation_data.json"
    if stamp.is_file() and read_json(stamp) == setup.data_key():
        try:
            return find_release(out / "release", preset="inat2018")
        except ValueError:
            pass
    release = synthetic_release(
        out, species=setup.species, photos=setup.photos, image_size=setup.image_size, seed=setup.data_seed,
        rules={"test_per_class": setup.test_per_class},
    )  # fmt: skip
    write_json(stamp, setup.data_key())
    return release


def _observers(release: Any) -> dict[int, Any]:
    """Image id → observer of the train and val images: the location files' ``user_id``, else ``rights_holder``.

    ``user_id`` is preferred: display names (``rights_holder``) are not unique to one observer.
    """
    from inatcomp.fileio import read_json

    observers: dict[int, Any] = {}
    for path in (release.train, release.val):
        locations = path.with_name(path.stem + "_locations.json")
        if locations.is_file():
            observers.update({int(r["id"]): r.get("user_id") for r in read_json(locations)})
        else:
            observers.update({int(i["id"]): i.get("rights_holder") for i in read_json(path)["images"]})
    return observers


def seen_observer_share(train_json: str | os.PathLike, val_json: str | os.PathLike, observers: dict[int, Any]) -> float:
    """Share of the val images whose observer also has images in train."""
    from inatcomp.fileio import read_json

    train_observers = {observers.get(int(i["id"])) for i in read_json(train_json)["images"]} - {None}
    val = [observers.get(int(i["id"])) for i in read_json(val_json)["images"]]
    return sum(o in train_observers for o in val) / len(val) if val else 0.0


def leaky_split(
    train_json: str | os.PathLike, val_json: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0
) -> tuple[Path, Path]:
    """Re-split a release's train + val images at random, ignoring observers, keeping each class's val size.

    The two COCO-style files keep every other key of the originals (info, licenses, categories) and the image
    and annotation records unchanged; only which file holds which image changes.

    Args:
        train_json: The release's train JSON.
        val_json: The release's val JSON.
        out: Folder for the leaky ``train`` and ``val`` files (named as the originals).
        seed: Seed of the draw.

    Returns:
        The leaky train and val JSON files.

    Raises:
        ValueError: An image in both files, or an image with no annotation.
    """
    from inatcomp.fileio import read_json, write_json

    train, val = read_json(train_json), read_json(val_json)
    images = {int(i["id"]): i for i in train["images"]}
    if any(int(i["id"]) in images for i in val["images"]):
        raise ValueError(f"{train_json}, {val_json}: an image id is in both files")
    images.update({int(i["id"]): i for i in val["images"]})
    annotations = {int(a["image_id"]): a for a in train["annotations"] + val["annotations"]}
    if set(annotations) != set(images):
        raise ValueError(f"{train_json}, {val_json}: some images have no annotation")
    val_size = collections.Counter(int(a["category_id"]) for a in val["annotations"])
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for image_id in sorted(annotations):
        by_class[int(annotations[image_id]["category_id"])].append(image_id)
    rng = np.random.default_rng([seed, 8])
    val_ids: set[int] = set()
    for category in sorted(by_class):
        chosen = rng.choice(by_class[category], size=val_size.get(category, 0), replace=False)
        val_ids.update(int(i) for i in chosen)
    out = Path(out)
    written = []
    for source, path, keep in ((train, Path(train_json), False), (val, Path(val_json), True)):
        ids = [i for i in sorted(images) if (i in val_ids) == keep]
        data = dict(source)
        data["images"] = [images[i] for i in ids]
        data["annotations"] = [annotations[i] for i in ids]
        write_json(out / path.name, data)
        written.append(out / path.name)
    return written[0], written[1]


def release_facts(release: Any, minival: Path, solution: Any, info: Any) -> dict[str, Any]:
    """Sizes of the release that the discussion needs: classes, splits, the tail, how skewed test is."""
    from inatcomp.fileio import read_json

    counts = info.train_counts
    test = collections.Counter(solution.expected.tolist())
    tail = {c for c, n in counts.items() if n < 10}
    top3 = sum(n for _, n in test.most_common(3))
    return {
        "classes": len(counts),
        "train_images": sum(counts.values()),
        "train_min_median_max": (min(counts.values()), int(np.median(list(counts.values()))), max(counts.values())),
        "val_images": len(read_json(release.val)["images"]),
        "finetune_images": len(read_json(minival / "val.json")["images"]),
        "minival_images": len(read_json(minival / "minival.json")["images"]),
        "test_images": len(solution.ids),
        "test_classes": len(test),
        "tail_classes": len(tail),
        "tail_test_classes": sum(1 for c in tail if test.get(c)),
        "tail_test_images": sum(test.get(c, 0) for c in tail),
        "test_share_top3_classes": top3 / max(len(solution.ids), 1),
        "genera": len({c.get("genus") for c in info.categories}),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def score_test(pred: Path, release: Any, solution: Any, info: Any, out_csv: Path) -> dict[str, float | None]:
    """Score test predictions against the hidden solution: errors, tail accuracy, genus share, class mean."""
    from inatcomp.formats.predictions import index_of
    from inatcomp.pipeline import submit
    from inatcomp.score.analysis import analyse
    from inatcomp.score.readers import read_submission

    scored = submit(release, pred, out_csv)
    submission = read_submission(scored["submission"], max_rows=len(solution.ids))
    rows = index_of(submission.ids, solution.ids)
    if (rows < 0).any():
        raise ValueError(f"{out_csv}: {int((rows < 0).sum())} solution rows missing from the submission")
    analysis = analyse(
        submission.labels[rows, 0], solution.expected, info.categories, info.train_counts, bins=TAIL_BINS
    )
    tail = next((b["accuracy"] for b in analysis["train_count_bins"] if b["low"] == TAIL_BINS[0][0]), None)
    return {
        "top1_error": scored["top1_error"],
        "top3_error": scored["top3_error"],
        "tail_accuracy": tail,
        "same_genus_share": analysis["mistakes"]["same_genus_share"],
        "mean_class_accuracy": analysis["mean_class_accuracy"],
        **prior_corrected_errors(pred, solution, info),
    }


def prior_corrected_errors(pred: Path, solution: Any, info: Any) -> dict[str, float]:
    """Top-1 and top-3 error of test predictions multiplied by the train class frequencies and renormalised.

    A model trained on balanced batches predicts as if every class were equally common; multiplying by the
    training prior (logit adjustment) puts the long tail back. Where this recovers the error, the balanced
    model lost on a prior shift, not on what it recognises.
    """
    from inatcomp.formats.predictions import index_of, open_predictions, top_k_columns
    from inatcomp.score.metric import top_k_error

    preds = open_predictions(pred)
    prior = np.array([info.train_counts.get(int(c), 0) for c in preds.category_ids], dtype=np.float64)
    rows = index_of(preds.image_ids, solution.ids)
    if (rows < 0).any():
        raise ValueError(f"{pred}: {int((rows < 0).sum())} test images not predicted")
    scores = preds.take_rows(rows).astype(np.float64) * (prior / prior.sum())
    ranked = preds.category_ids[top_k_columns(scores, 3)]
    return {
        "prior_top1_error": top_k_error(ranked, solution.expected, 1),
        "prior_top3_error": top_k_error(ranked, solution.expected, 3),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The run


def _train_options(setup: Setup, seed: int) -> dict[str, Any]:
    return {
        "model": setup.model, "pretrained": setup.pretrained, "img_size": setup.img_size, "epochs": setup.epochs,
        "batch_size": setup.batch_size,
        "optimizer": setup.optimizer, "lr": setup.lr, "weight_decay": setup.weight_decay, "schedule": "cosine",
        "warmup_epochs": 0.5, "crop_scale": list(setup.crop_scale), "max_steps_per_epoch": setup.max_steps_per_epoch,
        "workers": setup.workers, "seed": seed, "log_every": 0,
    }  # fmt: skip


class _Clock:
    """Logs each stage's wall time and the total."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        _logger.info("%-58s %6.1f s (total %6.1f s)", what, now - self.last, now - self.start)
        self.last = now


@dataclasses.dataclass
class _Bench:
    """What every step of one run shares: the setup, the splits, the scoring data, the output folder."""

    setup: Setup
    out: Path
    release: Any  # the isolated release; its test split and solution score every row
    held_out: Any  # the release with the minival as val (model choice of every training, and the balanced view)
    minival: Path  # split_val's folder: val.json (fine-tuning) and minival.json
    leaky: Any  # the release with the leaky train and val
    solution: Any
    info: Any
    seen: dict[str, float]
    clock: _Clock

    def score(self, preds: dict[str, Path], seed: int, name: str) -> dict[str, float | None]:
        """Test metrics (against the solution) and the minival errors of one step's predictions."""
        from inatcomp.score.scoring import score_predictions

        csv = self.out / f"seed{seed}" / "submissions" / f"{name}.csv"
        scores = score_test(preds["test"], self.release, self.solution, self.info, csv)
        minival = score_predictions(preds["val"], self.held_out.val, k=3)
        return {**scores, "minival_top1_error": minival["top1_error"], "minival_top3_error": minival["top3_error"]}


def _prepare(setup: Setup, out: Path) -> _Bench:
    """Build (or reuse) the release, split val into fine-tuning and minival, write the leaky split."""
    from inatcomp.build import split_val
    from inatcomp.fileio import write_json
    from inatcomp.score.analysis import load_dataset_info
    from inatcomp.score.readers import read_solution

    clock = _Clock()
    release = _release(out / "data", setup)
    minival = out / "minival"
    split_val(release.val, minival, minival_frac=setup.minival_frac, seed=setup.data_seed)
    leaky_train, leaky_val = leaky_split(release.train, release.val, out / "leaky", seed=setup.data_seed)
    solution, info = read_solution(release.solution), load_dataset_info(release.root)
    observers = _observers(release)
    seen = {
        "isolated": seen_observer_share(release.train, release.val, observers),
        "leaky": seen_observer_share(leaky_train, leaky_val, observers),
    }
    facts = release_facts(release, minival, solution, info)
    write_json(out / "facts.json", {**facts, "setup": dataclasses.asdict(setup), "seen_observer_share": seen})
    clock.lap(f"release: {facts['classes']} classes, {facts['train_images']} train, {facts['test_images']} test")
    return _Bench(
        setup=setup, out=out, release=release, held_out=dataclasses.replace(release, val=minival / "minival.json"),
        minival=minival, leaky=dataclasses.replace(release, train=leaky_train, val=leaky_val), solution=solution,
        info=info, seen=seen, clock=clock,
    )  # fmt: skip


def _predict(bench: _Bench, checkpoint: Path, seed: int, name: str, tta: str = "center") -> dict[str, Path]:
    """Minival (``val``) and test predictions of a run's best checkpoint."""
    from inatcomp.pipeline import predict_run

    out = bench.out / f"seed{seed}" / "predictions" / name
    return predict_run(checkpoint, bench.held_out, out, tta=tta, batch_size=bench.setup.batch_size)[0]


def _recipe_model(bench: _Bench, seed: int, base: Any | None = None) -> dict[str, dict[str, Path]]:
    """Steps 4–6 of one seed: the step-4 run (trained here unless ``base`` is given), val fine-tuning, TTA."""
    from inatcomp.pipeline import train_run

    setup, out = bench.setup, bench.out / f"seed{seed}"
    if base is None:
        options = _train_options(setup, seed)
        for _, _, step in STEPS:
            options.update(step)
        base = train_run(bench.held_out, out / "taxonomy_smoothing", **options)
        bench.clock.lap(f"seed {seed}: step 4 (for the ensemble)")
    # The fine-tuning keeps step 4's loss (label and taxonomy smoothing): only the data and the learning rate
    # change, so that the row measures the fine-tuning and not the loss of smoothing. BatchNorm keeps the train
    # set's statistics (16 batches of val would replace them: +0.025 test top-1 error on their own).
    loss = {k: v for _, _, step in STEPS for k, v in step.items() if k in ("label_smoothing", "taxonomy_smoothing")}
    tuned = train_run(
        bench.held_out, out / "val_finetune", init=base.run_dir / "best.safetensors", **loss, freeze_norm_stats=True,
        train=bench.minival / "val.json", categories_from="init", optimizer=setup.optimizer,
        lr=setup.lr * setup.finetune_lr_factor, weight_decay=setup.weight_decay, schedule="cosine", warmup_epochs=0,
        epochs=setup.finetune_epochs, sampler="random", batch_size=setup.batch_size,
        crop_scale=list(setup.crop_scale), workers=0, seed=seed, log_every=0,
    )  # fmt: skip
    bench.clock.lap(f"seed {seed}: step 5 (val fine-tuning)")
    preds = {
        "val_finetune": _predict(bench, tuned.run_dir, seed, "val_finetune"),
        "tta": _predict(bench, tuned.run_dir, seed, "tta", tta=setup.tta),
    }
    bench.clock.lap(f"seed {seed}: predict (centre and {setup.tta})")
    return preds


def _trained_steps(bench: _Bench, seed: int) -> tuple[dict[str, dict[str, Path]], dict[str, Path]]:
    """Steps 1–6 of one seed; returns the predictions of each and the step-1 run's last-epoch predictions."""
    from inatcomp.pipeline import predict_run, train_run

    out = bench.out / f"seed{seed}"
    options = _train_options(bench.setup, seed)
    preds: dict[str, dict[str, Path]] = {}
    result = plain = None
    for key, title, step in STEPS:
        options.update(step)
        result = train_run(bench.held_out, out / key, **options)
        preds[key] = _predict(bench, result.run_dir, seed, key)
        bench.clock.lap(f"seed {seed}: {title}")
        if key == "plain":
            last = result.run_dir / "last.safetensors"
            plain, _ = predict_run(last, bench.release, out / "predictions" / "leak_isolated", parts=("val", "test"))
    preds.update(_recipe_model(bench, seed, result))
    return preds, plain


def _leak(bench: _Bench, seed: int, isolated: dict[str, Path]) -> list[dict[str, float | None]]:
    """The leak comparison of one seed: step 1's recipe trained on the leaky split; both scored from the last epoch."""
    from inatcomp.pipeline import predict_run, train_run
    from inatcomp.score.scoring import score_predictions

    out = bench.out / f"seed{seed}"
    run = train_run(bench.leaky, out / "leaky", **_train_options(bench.setup, seed))
    leaked, _ = predict_run(run.run_dir / "last.safetensors", bench.leaky, out / "predictions" / "leak_leaky",
                            parts=("val", "test"))  # fmt: skip
    rows = []
    for kind, preds, split in (("isolated", isolated, bench.release), ("leaky", leaked, bench.leaky)):
        csv = out / "submissions" / f"leak_{kind}.csv"
        test = score_test(preds["test"], bench.release, bench.solution, bench.info, csv)
        val = score_predictions(preds["val"], split.val, k=3)
        rows.append({"val_top1_error": val["top1_error"], "val_top3_error": val["top3_error"],
                     "test_top1_error": test["top1_error"], "test_top3_error": test["top3_error"],
                     "val_images_seen_observer": bench.seen[kind]})  # fmt: skip
    bench.clock.lap(f"seed {seed}: leaky split")
    return rows


def _ensemble_and_prior(
    bench: _Bench, seed: int, members: list[dict[str, Path]]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Steps 7 and 8 of one seed: the mean-prob ensemble of two step-6 models, then × the geo prior."""
    from inatcomp.predict.ensemble import ensemble
    from inatcomp.predict.geocombine import apply_prior
    from inatcomp.predict.geodata import find_locations
    from inatcomp.predict.geoprior import PriorConfig, train_prior

    setup, predictions = bench.setup, bench.out / f"seed{seed}" / "predictions"
    combined = {
        part: ensemble([m[part] for m in members], out=predictions / "ensemble" / f"{part}.pred")
        for part in ("val", "test")
    }
    config = PriorConfig(use_dates=True, seed=seed, epochs=setup.prior_epochs, hidden=setup.prior_hidden)
    prior = train_prior(bench.release.train, config=config)
    located = {}
    for part, source in (("val", bench.release.val), ("test", bench.release.test)):  # val's file covers the minival
        out = predictions / "geo_prior" / f"{part}.pred"
        _logger.debug("geo prior: %s", apply_prior(combined[part], prior=prior, out=out,
                                                   locations=find_locations(source)))  # fmt: skip
        located[part] = out
    return combined, located


def run(
    *, quick: bool = False, seeds: int | None = None, out: str | os.PathLike | None = None, setup: Setup | None = None
) -> list[Row]:
    """Run the ablation and the leak comparison; returns the rows of both tables.

    Args:
        quick: The tiny :data:`QUICK` setup instead of :data:`FULL`.
        seeds: Override the number of training seeds.
        out: Folder for the release, runs and predictions (default ``runs/ablation`` or ``runs/ablation-quick``).
        setup: A setup of one's own (overrides ``quick``).

    Returns:
        The ablation rows (:data:`ROW_NAMES`, in order), then the leak rows (:data:`LEAK_NAMES`).
    """
    import torch

    setup = setup or (QUICK if quick else FULL)
    if seeds is not None:
        setup = dataclasses.replace(setup, seeds=seeds)
    if setup.seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {setup.seeds}")
    out = Path(out or ("runs/ablation-quick" if quick else "runs/ablation"))
    threads = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        return _run(setup, out)
    finally:
        torch.set_num_threads(threads)


def _run(setup: Setup, out: Path) -> list[Row]:
    from inatcomp.fileio import write_json

    bench = _prepare(setup, out)
    rows = [Row("ablation", n.format(tta=setup.tta)) for n in ROW_NAMES]
    leak_rows = [Row("leak", n) for n in LEAK_NAMES]
    members = max(setup.seeds, 2)  # step 7 pairs seed i with seed i + 1, cyclically
    tta: dict[int, dict[str, Path]] = {}
    for seed in range(members):
        if seed >= setup.seeds:  # only the ensemble's second member
            tta[seed] = _recipe_model(bench, seed)["tta"]
            continue
        preds, isolated = _trained_steps(bench, seed)
        tta[seed] = preds["tta"]
        for row, key in zip(rows, [k for k, _, _ in STEPS] + ["val_finetune", "tta"]):
            row.add(bench.score(preds[key], seed, key))
        for row, values in zip(leak_rows, _leak(bench, seed, isolated)):
            row.add(values)
    for seed in range(setup.seeds):
        partner = (seed + 1) % members
        combined, located = _ensemble_and_prior(bench, seed, [tta[seed], tta[partner]])
        rows[6].add(bench.score(combined, seed, "ensemble"))
        rows[7].add(bench.score(located, seed, "geo_prior"))
        bench.clock.lap(f"seed {seed}: ensemble with seed {partner}, geo prior")
    write_json(out / "rows.json", [dataclasses.asdict(r) for r in rows + leak_rows], indent=2)
    return rows + leak_rows


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def _cell(row: Row, key: str, decimals: int) -> str:
    mean, std = row.mean(key), row.std(key)
    if mean is None:
        return "–"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if len(row.values.get(key, [])) > 1 else f"{mean:.{decimals}f}"


def _delta(row: Row, previous: Row, key: str, *, lower_is_better: bool = True) -> str:
    """The change from the previous row, paired per seed: the mean, and for how many seeds it was an improvement."""
    pairs = zip(row.values.get(key, []), previous.values.get(key, []))
    deltas = [a - b for a, b in pairs if a is not None and b is not None]
    if not deltas:
        return "–"
    better = sum((d < 0) if lower_is_better else (d > 0) for d in deltas)
    return f"{statistics.fmean(deltas):+.3f} ({better}/{len(deltas)} {'lower' if lower_is_better else 'higher'})"


def markdown(rows: Sequence[Row], *, facts: dict[str, Any] | None = None, seconds: float | None = None) -> str:
    """The generated part of ABLATION.md: the setup, the ablation table, the per-step changes, the leak table."""
    table = [r for r in rows if r.table == "ablation"]
    leak = [r for r in rows if r.table == "leak"]
    setup = Setup(**{k: tuple(v) if k == "crop_scale" else v for k, v in (facts or {}).get("setup", {}).items()})
    seeds = max((len(v) for r in table for v in r.values.values()), default=0)
    lines = [BEGIN, "", "## Setup", ""]
    if facts:
        low, median, high = facts["train_min_median_max"]
        lines += [
            f"- Data: one synthetic export ({setup.species} species, {setup.photos:,} photos of {setup.image_size} px, "
            f"seed {setup.data_seed}) built with the `inat2018` rules: {facts['classes']} classes in "
            f"{facts['genera']} genera; {facts['train_images']:,} train images (per class min {low}, median {median}, "
            f"max {high}); {facts['val_images']} val images (3 per class), split by observer into "
            f"{facts['finetune_images']} for fine-tuning and a minival of {facts['minival_images']} for model choice; "
            f"{facts['test_images']} test images over {facts['test_classes']} classes, scored against the hidden "
            f"solution. {facts['tail_classes']} classes have fewer than 10 train images; "
            f"{facts['tail_test_classes']} of them are in test, with {facts['tail_test_images']} images. The 3 "
            f"biggest classes hold {facts['test_share_top3_classes']:.0%} of test ("
            + (
                f"test: up to {setup.test_per_class} images per class, taken by whole observers)."
                if setup.test_per_class
                else "test is ⅓ × train, taken by whole observers)."
            ),
            f"- Model: `{setup.model}` "
            + ("from scratch" if setup.pretrained == "none" else f"fine-tuned from `--pretrained {setup.pretrained}`")
            + f" at {setup.img_size} px, {setup.epochs} epochs"
            + (f" (at most {setup.max_steps_per_epoch} steps each)" if setup.max_steps_per_epoch else "")
            + f", batch {setup.batch_size}, {setup.optimizer} lr {setup.lr:g} (cosine, half an epoch of warm-up), "
            f"weight decay {setup.weight_decay:g}, random-resized crops of {setup.crop_scale[0]:g}–"
            f"{setup.crop_scale[1]:g} of the area; best epoch on the minival. Val fine-tuning: "
            f"{setup.finetune_epochs} epoch(s) at lr {setup.lr * setup.finetune_lr_factor:g} from step 4's best "
            f"checkpoint. TTA: `{setup.tta}`. Geo prior: {setup.prior_epochs} epochs, {setup.prior_hidden} wide.",
        ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines.append(
        f"- Seeds: {seeds} training seed(s) over the one release; ± is the standard deviation over them. "
        f"Machine: {machine}, {setup.threads} torch thread(s). Date: {datetime.date.today().isoformat()}."
        + (f" Wall time: {seconds / 60:.1f} min." if seconds is not None else "")
    )
    lines += ["", "## Ablation (test split, mean ± std over seeds)", ""]
    lines.append("| step | " + " | ".join(title for title, _ in METRICS.values()) + " |")
    lines.append("| --- |" + " ---: |" * len(METRICS))
    for row in table:
        lines.append(f"| {row.name} | " + " | ".join(_cell(row, k, d) for k, (_, d) in METRICS.items()) + " |")
    lines += [
        "",
        "Change from the previous row, paired by seed (mean, and for how many seeds the error went down). The geo "
        "prior, TTA and progressive learning have published gains of their own; balanced batches, smoothing, val "
        "fine-tuning and ensembles are published only inside the winning 2018 recipes (docs/formats.md §5):",
        "",
        "| step | Δ top-1 error | Δ top-3 error | Δ tail-class accuracy | Δ mean class accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for previous, row in zip(table, table[1:]):
        cells = [_delta(row, previous, k) for k in ("top1_error", "top3_error")]
        cells += [_delta(row, previous, k, lower_is_better=False) for k in ("tail_accuracy", "mean_class_accuracy")]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Two other views of the same models: the test predictions multiplied by the train class frequencies and "
        "renormalised (the long-tailed prior that balanced batches take out, put back: roughly what a step would "
        "score where test follows train's long tail), and the error on the minival (up to 3 images "
        "of each class, balanced like iNat2018's val; no step trains on it, but every run picks its best epoch on "
        "it, so it is slightly optimistic):",
        "",
        "| step | test top-1 error × train prior | test top-3 error × train prior | minival top-1 error "
        "| minival top-3 error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in table:
        keys = ("prior_top1_error", "prior_top3_error", "minival_top1_error", "minival_top3_error")
        lines.append(f"| {row.name} | " + " | ".join(_cell(row, k, 3) for k in keys) + " |")
    if leak:
        lines += [
            "",
            "## Photographer leak (step 1's model, last epoch, mean ± std over seeds)",
            "",
            "| split | " + " | ".join(title for title, _ in LEAK_METRICS.values()) + " |",
            "| --- |" + " ---: |" * len(LEAK_METRICS),
        ]
        for row in leak:
            lines.append(f"| {row.name} | " + " | ".join(_cell(row, k, d) for k, (_, d) in LEAK_METRICS.items()) + " |")
        gaps = _leak_gap(leak)
        if gaps:
            lines += ["", gaps]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _leak_gap(leak: Sequence[Row]) -> str:
    """One sentence: how much better the leaky val looks than the isolated one, against the shared test."""
    isolated, leaky = leak[0], leak[1]
    keys = ("val_top1_error", "test_top1_error", "val_top3_error", "test_top3_error")
    if not all(k in r.values for r in leak for k in keys):
        return ""
    parts = []
    for k in ("top1", "top3"):
        val = [a - b for a, b in zip(leaky.values[f"val_{k}_error"], isolated.values[f"val_{k}_error"])]
        test = [a - b for a, b in zip(leaky.values[f"test_{k}_error"], isolated.values[f"test_{k}_error"])]
        parts.append(
            f"{k[:3]}-{k[3:]} error {statistics.fmean(val):+.3f} on their own val (per seed "
            f"{', '.join(f'{x:+.3f}' for x in val)}) but {statistics.fmean(test):+.3f} on the shared test"
        )
    return "Leaky minus isolated: " + "; ".join(parts) + "."


DEFAULT_DISCUSSION = """
## Discussion

(Not written yet: what each row shows, whether each technique moved error in its published direction, and why.)
"""


def write_markdown(path: str | os.PathLike, text: str) -> Path:
    """Write the generated part into ``path``, keeping a title above it and everything below its end marker."""
    from inatcomp.fileio import replace_generated_block, write_atomic

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN not in old or END not in old:  # a new file: a title, the generated part, the discussion to write
        return write_atomic(
            path, "# Ablation: the long-tail recipe on the synthetic benchmark\n\n" + text + DEFAULT_DISCUSSION
        )
    return replace_generated_block(path, "ablation", text.strip().removeprefix(BEGIN).removesuffix(END))


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(prog="ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="append", default=[],
                        help="Markdown file whose generated part to rewrite (ABLATION.md; repeatable)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed: a smoke run of about 2 minutes")
    parser.add_argument("--seeds", type=int, help=f"training seeds (default {FULL.seeds}; {QUICK.seeds} with --quick)")
    parser.add_argument("--out", help="folder for the data and runs (default runs/ablation or runs/ablation-quick)")
    return parser


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the ablation, log both tables, and with ``--write`` rewrite the Markdown file; returns the rows."""
    from benchmarks.common import run_and_write

    args = get_args_parser().parse_args(argv)
    return run_and_write(args, name="ablation", run=run, markdown=markdown, write_markdown=write_markdown)


if __name__ == "__main__":
    main()
