"""The spatio-temporal prior of Mac Aodha et al. (ICCV 2019) on top of an image model, with and without dates.

Trains two presence-only priors on the release's train places (place only; place and day of the year), multiplies
the image model's val probabilities by each, and reports the val top-1/top-3 error of the image model alone and
with each prior (published on iNat2018 val: top-1 accuracy 60.2 → 72.8). Writes ``geo_prior.md`` (the table),
``prior_map.png`` (the most observed species' prior with its training places), the priors, and with a model
(``--checkpoint``, or one trained here) the test predictions with the dated prior and their submission::

    python kernels/geo_prior.py --data runs/demo/release --val-pred runs/demo/predictions/recipe_val.pred
    python kernels/geo_prior.py --data /data/inat2018 --checkpoint runs/r50 --out runs/geo
    python kernels/geo_prior.py --smoke

Without ``--val-pred`` or ``--checkpoint`` an image model is trained first with the demo's recipe (resnet10t,
64 px). ``--smoke`` runs every step on a tiny synthetic release (a few training steps) to check the path.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json, write_atomic
from inatcomp.pipeline import (
    add_kernel_arguments,
    kernel_release,
    predict_run,
    run_kernel,
    submit,
    train_run,
    write_summary,
)
from inatcomp.predict.engine import predict
from inatcomp.predict.geocombine import apply_prior, evaluate_prior
from inatcomp.predict.geodata import find_locations, load_observations
from inatcomp.predict.geomap import plot_prior_map
from inatcomp.predict.geoprior import PriorConfig, train_prior

_VARIANTS = {"place": False, "place_date": True}
_NAMES = {"place": "image model + geo prior (place)", "place_date": "image model + geo prior (place and date)"}


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    d = PriorConfig()
    parser = argparse.ArgumentParser(prog="geo_prior", description=__doc__.split("\n")[0])
    parser.add_argument("--val-pred", help="the image model's val predictions (a .pred folder)")
    parser.add_argument("--test-pred", help="the image model's test predictions, to apply the dated prior to")
    parser.add_argument("--checkpoint", help="image model run or checkpoint: predicts val and test here")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"prior epochs (default {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--min-steps-per-epoch", type=int, default=d.min_steps_per_epoch)
    parser.add_argument("--hidden", type=int, default=d.hidden)
    parser.add_argument("--layers", type=int, default=d.layers)
    parser.add_argument("--seeds", type=int, default=1, help="train each prior with this many seeds (mean, spread)")
    add_kernel_arguments(parser, out="runs/geo_prior", year=True)
    return parser


def _image_predictions(args: argparse.Namespace, release: Any, out: Path) -> tuple[Path, Path | None, Path | None]:
    """Val predictions, test predictions (or None) and the checkpoint (or None) of the image model."""
    if args.val_pred:
        return Path(args.val_pred), Path(args.test_pred) if args.test_pred else None, None
    checkpoint = args.checkpoint
    if checkpoint is None:
        options = {
            "model": "resnet10t", "pretrained": "synth", "img_size": 64, "epochs": 15, "batch_size": 64,
            "workers": args.workers, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5,
            "sampler": "class-balanced", "label_smoothing": 0.1, "taxonomy_smoothing": True, "log_every": 0,
            "crop_scale": [0.35, 1.0],
        }  # fmt: skip
        if args.smoke:
            options.update(img_size=32, epochs=1, batch_size=16, max_steps_per_epoch=2, workers=0)
        checkpoint = train_run(release, out / "image_model", **options).run_dir
    preds, _ = predict_run(checkpoint, release, out / "predictions", tta="center" if args.smoke else "flip",
                           amp=args.amp, parts=("val",))  # fmt: skip
    return preds["val"], None, Path(checkpoint)


def _measure(observations: Any, val_pred: Path, release: Any, config: dict, seeds: int, out: Path) -> tuple[dict, Any]:
    """Train each prior variant with ``seeds`` seeds and evaluate it on val; returns the summary and the dated prior."""
    summary: dict[str, Any] = {}
    priors = {}
    for variant, dates in _VARIANTS.items():
        runs = []
        for seed in range(seeds):
            prior = train_prior(observations, config=PriorConfig(use_dates=dates, seed=seed, **config),
                                out=out / f"prior_{variant}" if seed == 0 else None)  # fmt: skip
            runs.append(evaluate_prior(val_pred, release.val, prior=prior, k=3))
            priors.setdefault(variant, prior)
        image = runs[0]["image"]
        summary["val_top1_error"], summary["val_top3_error"] = image["top1_error"], image["top3_error"]
        for k in ("top1", "top3"):
            values = [r["combined"][f"{k}_error"] for r in runs]
            summary[f"val_{k}_error_{variant}"] = statistics.fmean(values)
            summary[f"val_{k}_gain_{variant}"] = image[f"{k}_error"] - statistics.fmean(values)
            summary[f"val_{k}_spread_{variant}"] = max(values) - min(values)
            summary[f"prior_alone_{k}_error_{variant}"] = statistics.fmean(r["prior_alone"][f"{k}_error"] for r in runs)
        summary["val_images"], summary["val_with_location"] = runs[0]["images"], runs[0]["with_location"]
    return summary, priors["place_date"]


def _table(summary: dict, note: str) -> str:
    lines = ["| model | val top-1 error | val top-3 error | top-1 gain (points) | top-3 gain (points) |",
             "| --- | ---: | ---: | ---: | ---: |",
             f"| image model | {summary['val_top1_error']:.4f} | {summary['val_top3_error']:.4f} | | |"]  # fmt: skip
    for variant in _VARIANTS:
        errors = [f"{summary[f'val_{k}_error_{variant}']:.4f}" for k in ("top1", "top3")]
        gains = [f"{100 * summary[f'val_{k}_gain_{variant}']:+.1f}" for k in ("top1", "top3")]
        lines.append(f"| {_NAMES[variant]} | {' | '.join(errors + gains)} |")
    return "# Geo prior on val\n\n" + "\n".join(lines) + f"\n\n{note}\n"


def _map(prior: Any, observations: Any, release: Any, out: Path, *, resolution: float) -> Path:
    """The dated prior of the most observed species on its mean day, with its training places."""
    counts = prior.metadata["observations_per_category"]
    column = max(range(len(counts)), key=counts.__getitem__)
    category = int(prior.category_ids[column])
    names = {c["id"]: c.get("name", "") for c in read_json(release.train).get("categories", [])}
    mask = observations.label == column
    angle = 2 * np.pi * observations.day[mask & np.isfinite(observations.day)]
    day = float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi)) % 1.0
    return plot_prior_map(
        prior, out=out, category_id=category, points=(observations.lat[mask], observations.lon[mask]), day=day,
        resolution=resolution,
        title=f"geo prior of {names.get(category, category)} (id {category}) on day {int(day * 365) + 1} of the year",
    )  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    """Train the priors, measure them on val, map one species, apply the dated prior to test; returns the summary."""
    out = Path(args.out)
    release = kernel_release(args, image_size=48)
    val_pred, test_pred, checkpoint = _image_predictions(args, release, out)
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "min_steps_per_epoch": args.min_steps_per_epoch,
              "hidden": args.hidden, "layers": args.layers}  # fmt: skip
    if args.smoke:
        config.update(epochs=2, batch_size=64, min_steps_per_epoch=5, hidden=32, layers=1)
    observations = load_observations(release.train)
    summary, dated = _measure(observations, val_pred, release, config, args.seeds, out)
    summary["train_counts"] = observations.counts
    note = (
        f"val images: {summary['val_images']} ({summary['val_with_location']} with a location); "
        f"prior seeds: {args.seeds}; prior options: {config}."
    )
    write_atomic(out / "geo_prior.md", _table(summary, note))
    summary["map"] = _map(dated, observations, release, out / "prior_map.png", resolution=4.0 if args.smoke else 1.0)

    geo_test = out / "predictions" / "test_geo.pred"
    if checkpoint is not None:
        tta = "center" if args.smoke else "flip"
        test_pred = predict(checkpoint=checkpoint, data=release.test, images=release.root, out=geo_test,
                            geo_prior=dated.path, tta=tta)  # fmt: skip
    elif test_pred is not None:
        apply_prior(test_pred, prior=dated, locations=find_locations(release.test), out=geo_test)
        test_pred = geo_test
    if test_pred is not None:
        summary["test_predictions"] = test_pred
        summary.update(submit(release, test_pred, out / "submission.csv"))
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
