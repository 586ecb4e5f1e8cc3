"""Progressive learning: the fixed-size run's final val accuracy reached in ≤ 0.5× its wall time.

Both runs train resnet10t from scratch on the same synthetic iNat2021-style release (10 val images per class),
one after the other in this process, with the same epochs, learning-rate schedule and sampler. The fixed run
trains at 64 px throughout; the progressive run (EfficientNetV2's recipe, as iNaturalist used it in 2024)
starts at 32 px with a larger batch and weak augmentation and grows to 64 px, raising augmentation magnitude
and dropout with the size. The figure is the wall time (sum of the epochs' seconds, evaluation included) at
which the progressive run's val top-1 accuracy first reaches the fixed run's final one, over the fixed run's
total. Both curves of val accuracy against time are drawn in ``docs/progressive.png``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result, run_script

_GOAL = 0.5
PLOT = Path(__file__).resolve().parents[1] / "docs" / "progressive.png"


#: The 2021 rules with 20 train images per class at least (2021: 50), so that a few thousand photos keep enough
#: classes for a val set of some size (10 images per class).
RULES = {"min_train": 20, "train_mini_per_class": 20}


def stages(epochs: int) -> list[dict[str, Any]]:
    """The progressive schedule over ``epochs`` (at least 3): 40 % at 32 px, 30 % at 48 px, the rest at 64 px."""
    small, middle = max(1, round(0.4 * epochs)), max(1, round(0.3 * epochs))
    return [
        {"epochs": small, "img_size": 32, "batch_size": 128, "magnitude": 0.25, "drop_rate": 0.0},
        {"epochs": middle, "img_size": 48, "batch_size": 96, "magnitude": 0.6, "drop_rate": 0.1},
        {"epochs": epochs - small - middle, "img_size": 64, "batch_size": 64, "magnitude": 1.0, "drop_rate": 0.2},
    ]


def curve(metrics: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Cumulative wall seconds and val top-1 accuracy after each epoch."""
    seconds, accuracy, total = [], [], 0.0
    for row in metrics:
        total += row["epoch_seconds"]
        seconds.append(total)
        accuracy.append(1.0 - row["val_top1_error"])
    return seconds, accuracy


def time_to_reach(seconds: list[float], accuracy: list[float], target: float) -> float | None:
    """The first time the curve reaches ``target`` (None if never)."""
    return next((t for t, a in zip(seconds, accuracy) if a >= target - 1e-12), None)


def plot(curves: dict[str, tuple[list[float], list[float]]], out: Path) -> None:
    """Val accuracy against wall time of each run, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inatcomp.fileio import write_atomic

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (seconds, accuracy) in curves.items():
        ax.plot(seconds, accuracy, marker="o", label=name)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("val top-1 accuracy")
    ax.set_title("Progressive learning vs fixed size (synthetic iNat2021-style release)")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    write_atomic(out, buffer.getvalue())


def run(*, quick: bool = False, plot_to: Path | None = PLOT) -> list[Result]:
    """Train both runs and compare; ``quick`` uses a tiny release and few epochs (smoke runs only)."""
    from inatcomp.pipeline import synthetic_release, train_run

    species, photos, epochs = (12, 900, 3) if quick else (40, 8000, 10)
    common = {
        "model": "resnet10t", "epochs": epochs, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5,
        "workers": 0, "log_every": 0, "crop_scale": [0.35, 1.0], "seed": 0, "sampler": "random",
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # The 2021 preset keeps 10 val images per class (2018: 3), so the accuracy curves are less noisy.
        release = synthetic_release(
            Path(tmp), species=species, photos=photos, image_size=96, preset="inat2021", rules=RULES
        )
        fixed = train_run(
            release, Path(tmp) / "fixed", img_size=64, batch_size=64, magnitude=1.0, drop_rate=0.2, **common
        )
        progressive = train_run(release, Path(tmp) / "progressive", img_size=64, progressive=stages(epochs), **common)
    curves = {"fixed 64 px": curve(fixed.metrics), "progressive 32→48→64 px": curve(progressive.metrics)}
    fixed_seconds, fixed_accuracy = curves["fixed 64 px"]
    prog_seconds, prog_accuracy = curves["progressive 32→48→64 px"]
    target = fixed_accuracy[-1]
    reached = time_to_reach(prog_seconds, prog_accuracy, target)
    ratio = reached / fixed_seconds[-1] if reached is not None else float("inf")
    if plot_to is not None and not quick:
        plot(curves, plot_to)
    figure = (
        f"fixed: val top-1 {target:.3f} after {fixed_seconds[-1]:.0f} s; progressive: "
        + (f"reaches it at {reached:.0f} s" if reached is not None else "never reaches it")
        + f", ends at {prog_accuracy[-1]:.3f} after {prog_seconds[-1]:.0f} s ({epochs} epochs each, {species} species)"
    )
    return [
        Result(
            goal=f"progressive learning reaches the fixed-size run's final val accuracy in ≤ {_GOAL}× its wall time",
            figure=figure,
            ratio=ratio / _GOAL,
            met=ratio <= _GOAL,
        )
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
