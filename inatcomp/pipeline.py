"""The steps every competitor script repeats, over the library: find a release, train, predict, submit, score.

The kernels (``kernels/*.py``), the demo and the ablation are short sequences of these calls:

* :func:`find_release` locates a release's files (a downloaded iNat2017/2018/2021 folder or one built by
  ``inatcomp build``) and says which file is missing;
* :func:`synthetic_release` writes a synthetic export and builds it (the ``--smoke`` data of the kernels);
* :func:`train_run` trains with :class:`inatcomp.train.TrainConfig` options on a release;
* :func:`predict_run` predicts val and test with test-time augmentation and scores val;
* :func:`submit` writes the submission CSV, validates it against the test file, and scores it when the
  release has a solution (synthetic releases do; downloaded ones keep it on Kaggle).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.build.release import build_dataset
from inatcomp.build.releases import Release, find_release
from inatcomp.build.rules import Preset, rules_for
from inatcomp.fileio import read_json, write_json
from inatcomp.predict.engine import PREDICT_DEFAULTS, predict
from inatcomp.predict.ensemble import ensemble
from inatcomp.predict.submission import validate_submission, write_submission
from inatcomp.score.scoring import score_file, score_predictions
from inatcomp.train.runs import train_run
from inatcomp.world.synth import SynthConfig, write_export

__all__ = [
    "YEARS",
    "Release",
    "add_kernel_arguments",
    "ensemble_run",
    "kernel_release",
    "find_release",
    "predict_run",
    "run_kernel",
    "submit",
    "subset_categories",
    "synthetic_release",
    "train_run",
    "write_summary",
]

_logger = logging.getLogger(__name__)


#: The ``--year`` choices of the kernels and the presets they name.
YEARS = {"2017": Preset.INAT2017, "2018": Preset.INAT2018, "2021": Preset.INAT2021}


def add_kernel_arguments(parser: Any, *, out: str, year: bool = True) -> None:
    """The options every kernel has: ``--data``, ``--year`` (unless fixed), ``--out``, ``--workers``, ``--amp``,
    ``--smoke``."""
    parser.add_argument("--data", help="the release folder (train2018.json … or train.json … for 2021)")
    if year:
        parser.add_argument("--year", choices=sorted(YEARS), default="2018", help="the release's year (file names)")
    parser.add_argument("--out", default=out, help="folder for runs, predictions, the submission and summary.json")
    parser.add_argument("--workers", type=int, default=8, help="loader processes")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps on small images (CI); synthetic unless --data"
    )


def kernel_release(args: Any, *, preset: Preset | str | None = None, image_size: int = 80) -> Release:
    """The release a kernel runs on: ``--data``, or with ``--smoke`` a tiny synthetic one under ``--out/data``.

    Raises:
        ValueError: Neither ``--data`` nor ``--smoke``, or a ``--data`` folder without the year's files.
    """
    preset = Preset(preset) if preset is not None else YEARS[getattr(args, "year", "2018")]
    if args.data:
        return find_release(args.data, preset=preset)
    if args.smoke:
        return synthetic_release(
            Path(args.out) / "data", species=12, photos=900, image_size=image_size, preset=preset, workers=1
        )
    raise ValueError("--data is required (the release folder), or --smoke for a tiny synthetic one")


def synthetic_release(
    out: str | os.PathLike,
    *,
    species: int = 30,
    photos: int = 2000,
    image_size: int = 64,
    seed: int = 0,
    preset: Preset | str = Preset.INAT2018,
    workers: int | None = None,
    rules: dict[str, Any] | None = None,
) -> Release:
    """Write a synthetic export under ``out/export`` and build it into ``out/release``.

    Args:
        out: The folder for both.
        species: Species in the synthetic taxonomy.
        photos: Photos in the export (the release keeps those that pass the preset's rules).
        image_size: Long side of the synthetic photos.
        seed: Seed of the export and the build.
        preset: The release's year.
        workers: Processes rendering photos and writing the release (None: all cores).
        rules: Build rules replacing the preset's (``BuildRules`` field → value), e.g. ``{"test_per_class": 10}``.
    """
    out, preset = Path(out), Preset(preset)
    export = out / "export"
    options: dict[str, Any] = {"workers": workers} if workers else {}
    write_export(export, SynthConfig(species=species, photos=photos, seed=seed, image_size=image_size, **options))
    build_rules = rules_for(preset, **(rules or {}))
    build_dataset(export, out / "release", rules=build_rules, seed=seed, overwrite=True, **options)
    return find_release(out / "release", preset=preset)


def subset_categories(
    source: str | os.PathLike, out: str | os.PathLike, *, keep: float, seed: int = 0, category_ids: Any = None
) -> tuple[Path, list[int]]:
    """Write a copy of a dataset JSON restricted to some categories (an older, smaller taxon set).

    Args:
        source: A competition JSON.
        out: The JSON to write.
        keep: Share of the categories kept, drawn at random (ignored when ``category_ids`` is given).
        seed: Seed of the draw.
        category_ids: The categories to keep.

    Returns:
        The written file and the kept category ids.
    """
    data = read_json(source)
    ids = sorted(int(c["id"]) for c in data["categories"])
    if category_ids is None:
        rng = np.random.default_rng(seed)
        category_ids = sorted(rng.choice(ids, size=max(1, round(keep * len(ids))), replace=False).tolist())
    kept = {int(c) for c in category_ids}
    annotations = [a for a in data.get("annotations", []) if int(a["category_id"]) in kept]
    images = {int(a["image_id"]) for a in annotations}
    subset = dict(data)
    subset["categories"] = [c for c in data["categories"] if int(c["id"]) in kept]
    subset["annotations"] = annotations
    subset["images"] = [i for i in data["images"] if int(i["id"]) in images]
    write_json(out, subset)
    return Path(out), sorted(kept)


def predict_run(
    checkpoint: str | os.PathLike,
    release: Release,
    out: str | os.PathLike,
    *,
    tta: str = PREDICT_DEFAULTS.tta.value,
    batch_size: int = PREDICT_DEFAULTS.batch_size,
    amp: str | None = None,
    parts: tuple[str, ...] = ("val", "test"),
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Predict the release's splits with one TTA preset; returns the prediction folders and the val score.

    Args:
        checkpoint: A checkpoint file, stem or run folder.
        release: The release.
        out: The folder for ``<part>.pred`` prediction folders.
        tta: The TTA preset (:class:`inatcomp.predict.tta.TTAMode` value).
        batch_size: Images per batch.
        amp: ``bf16``/``fp16`` autocast, or None.
        parts: Which splits.
    """
    out = Path(out)
    preds = {
        part: predict(
            checkpoint=checkpoint, data=getattr(release, part), images=release.root, tta=tta,
            out=out / f"{part}.pred", batch_size=batch_size, amp=amp,
        )
        for part in parts
    }  # fmt: skip
    score = score_predictions(preds["val"], release.val, k=3) if "val" in preds else {}
    if score:
        _logger.info("%s: val top-1 error %.4f, top-3 %.4f", out, score["top1_error"], score["top3_error"])
    return preds, score


def ensemble_run(
    members: dict[str, list[Path]], release: Release, out: str | os.PathLike
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Average members' predictions (mean probability) split by split; returns the folders and the val score.

    Args:
        members: Split name (``val``, ``test``) → the members' prediction folders.
        release: The release whose ``val`` labels score the ensemble.
        out: The folder for ``<part>.pred``.
    """
    out = Path(out)
    combined = {part: ensemble(paths, out=out / f"{part}.pred") for part, paths in members.items()}
    score = score_predictions(combined["val"], release.val, k=3) if "val" in combined else {}
    return combined, score


def submit(release: Release, test_pred: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write and validate a submission CSV from test predictions; score it when the release has a solution.

    Returns:
        ``{"submission": Path, "problems": [...], "top1_error": …, "top3_error": …}`` (errors only with a
        solution; the official k is the format's).

    Raises:
        ValueError: The written submission does not validate against the test file.
    """
    path = write_submission(test_pred, format=release.submission_format, out=out)
    problems = validate_submission(path, release.test, format=release.submission_format)
    if problems:
        raise ValueError(f"{path}: the submission does not validate: {problems[0]}")
    result: dict[str, Any] = {"submission": path}
    if release.solution is not None:
        scored = score_file(path, release.solution)
        result["top1_error"] = scored.error("all", k=1)
        result[f"top{scored.k}_error"] = scored.error("all", k=scored.k)
        _logger.info("%s: test top-1 error %.4f (solution)", path, result["top1_error"])
    return result


def write_summary(out: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write a kernel's summary as ``out/summary.json`` (paths as strings) and log it."""
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}
    path = Path(out) / "summary.json"
    write_json(path, plain, indent=2)
    _logger.info(
        "%s: %s", path, ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in plain.items())
    )
    return path


def run_kernel(get_args_parser: Any, main: Any, argv: list[str] | None = None) -> None:
    """A kernel's ``__main__``: logging to stderr, parse, run; a ``ValueError`` exits with its message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = get_args_parser()
    try:
        main(parser.parse_args(argv))
    except ValueError as error:
        sys.exit(f"{parser.prog}: {error}")
