"""Covariance pooling (iSQRT-COV) against average pooling on the synthetic benchmark: val error and time.

Not a speed goal but the measured effect issue 5 asks for: resnet10t from scratch on one synthetic
iNat2021-style release (10 val images per class), the same recipe and seeds, once with timm's average pooling
and once with ``head: isqrtcov``. The covariance needs spatial positions, so the images are 128 px (a 4×4
final map) and the reduction is small (``head_dim`` 32: 528 features). Mean and range over the seeds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

_logger = logging.getLogger(__name__)


#: The 2021 rules with 20 train images per class at least (2021: 50), so that a few thousand photos keep enough
#: classes for a val set of some size (10 images per class).
RULES = {"min_train": 20, "train_mini_per_class": 20}


def run(*, quick: bool = False, seeds: int = 2) -> list[dict]:
    """Train both heads on the same release; one row per head with val errors and seconds per epoch."""
    from inatcomp.pipeline import synthetic_release, train_run

    species, photos, epochs, img_size = (8, 600, 1, 96) if quick else (40, 6000, 8, 128)
    common = {
        "model": "resnet10t", "img_size": img_size, "epochs": epochs, "batch_size": 48, "lr": 0.05,
        "schedule": "cosine", "warmup_epochs": 0.5, "workers": 0, "log_every": 0, "crop_scale": [0.35, 1.0],
        "sampler": "class-balanced", "label_smoothing": 0.1,
    }  # fmt: skip
    heads = {"avg": {"head": "avg"}, "isqrtcov": {"head": "isqrtcov", "head_dim": 32}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        release = synthetic_release(
            Path(tmp), species=species, photos=photos, image_size=160, preset="inat2021", rules=RULES
        )
        results: dict[str, list[dict]] = {name: [] for name in heads}
        for seed in range(1 if quick else seeds):
            for name, options in heads.items():
                run_ = train_run(release, Path(tmp) / f"{name}_{seed}", seed=seed, **common, **options)
                last = run_.metrics[-1]
                results[name].append(
                    {
                        "top1": last["val_top1_error"],
                        "top3": last["val_top3_error"],
                        "seconds": statistics.mean(r["epoch_seconds"] for r in run_.metrics),
                    }
                )
        for name, values in results.items():
            row = {"head": name, "seeds": len(values), "epochs": epochs, "img_size": img_size}
            for key in ("top1", "top3", "seconds"):
                column = [v[key] for v in values]
                row[key] = statistics.mean(column)
                row[f"{key}_range"] = (min(column), max(column))
            rows.append(row)
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    for row in run(quick=args.quick, seeds=args.seeds):
        _logger.info(
            "%-9s val top-1 error %.3f (%.3f–%.3f), top-3 %.3f (%.3f–%.3f), %.1f s/epoch; %d seeds, %d epochs, %d px",
            row["head"], row["top1"], *row["top1_range"], row["top3"], *row["top3_range"], row["seconds"],
            row["seeds"], row["epochs"], row["img_size"],
        )  # fmt: skip


if __name__ == "__main__":
    main()
