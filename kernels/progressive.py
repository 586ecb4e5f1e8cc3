"""Progressive learning: image size grows over training, with batch size and regularisation set per stage.

EfficientNetV2's recipe, as iNaturalist trained its 2024 models: about 100 px first, growing to the full size,
the batch shrinking as the images grow, augmentation magnitude and dropout rising with the size (without the
rise, accuracy dips at the switch to full size). ``kernels/configs/progressive.yaml`` holds the stages; this
kernel trains with them, predicts val and test with flip TTA, and submits. ``benchmarks/progressive.py``
measures the time it saves against a fixed-size run.

    python kernels/progressive.py --data /data/inat2018 --pretrained efficientnetv2_rw_s.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from inatcomp.pipeline import (
    add_kernel_arguments,
    kernel_release,
    predict_run,
    run_kernel,
    submit,
    train_run,
    write_summary,
)

CONFIG = Path(__file__).resolve().parent / "configs" / "progressive.yaml"
#: The smoke run's stages: 32 then 48 px.
SMOKE_STAGES = [
    {"epochs": 1, "img_size": 32, "batch_size": 32, "magnitude": 0.2, "drop_rate": 0.0},
    {"epochs": 1, "img_size": 48, "batch_size": 16, "magnitude": 1.0, "drop_rate": 0.2},
]


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    parser = argparse.ArgumentParser(prog="progressive", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(CONFIG), help="the recipe with its progressive: stages")
    parser.add_argument("--pretrained", help="local weights for the backbone (safetensors)")
    add_kernel_arguments(parser, out="runs/progressive", year=True)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Train with the stages, predict, submit; returns the summary."""
    out = Path(args.out)
    options: dict = {"pretrained": args.pretrained, "workers": args.workers, "amp": args.amp}
    if args.smoke:
        options.update(model="resnet10t", pretrained=args.pretrained or "synth", epochs=2, img_size=48,
                       progressive=SMOKE_STAGES, max_steps_per_epoch=3, workers=0, log_every=0)  # fmt: skip
    release = kernel_release(args, image_size=80)
    run = train_run(release, out / "run", config_file=args.config, **options)
    summary = {f"stage_{r['epoch']}": f"{r['img_size']} px, batch {r['batch_size']}" for r in run.metrics}
    preds, val = predict_run(run.run_dir, release, out / "predictions", tta="flip", amp=args.amp)
    summary.update(val_top1_error=val["top1_error"], val_top3_error=val["top3_error"])
    summary.update(submit(release, preds["test"], out / "submission.csv"))
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
