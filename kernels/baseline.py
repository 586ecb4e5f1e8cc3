"""The iNat2018 competition baseline: Inception-v3, one centre crop (docs/formats.md §5).

Recipe of the official PyTorch baseline: Inception-v3 (ImageNet weights, a new head over the release's
classes), SGD lr 0.0045, momentum 0.9, weight decay 1e-4, batch 64, lr ×0.1 every 30 epochs, 75 epochs,
RandomResizedCrop 299 + flip + ColorJitter(0.4, 0.4, 0.4, hue 0.25); predict one centre crop. Published on
iNat2018 val: 60.20 top-1 / 77.91 top-3 accuracy (Kaggle private top-3 error 0.3096).

Real data (a GPU machine; ``make baseline-inat2018 DATA=/path/to/inat2018``)::

    python kernels/baseline.py --data /data/inat2018 --year 2018 --pretrained inception_v3.safetensors

``--pretrained`` is a local timm checkpoint (safetensors), ``timm`` or ``hf-hub:timm/NAME.TAG`` (see inatcomp
train). ``--smoke`` runs the same steps on a tiny synthetic release (small images, a few steps) to check the
path end to end.
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


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    parser = argparse.ArgumentParser(prog="baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--pretrained", help="backbone weights: FILE (safetensors), timm or hf-hub:timm/NAME.TAG")
    parser.add_argument("--img-size", type=int, default=299)
    parser.add_argument("--epochs", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.0045)
    parser.add_argument("--device", default="auto")
    add_kernel_arguments(parser, out="runs/baseline", year=True)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Train, predict val and test with one centre crop, write the submission; returns the summary."""
    out = Path(args.out)
    options = {
        "model": args.model, "pretrained": args.pretrained, "img_size": args.img_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4, "optimizer": "sgd",
        "schedule": "step", "step_epochs": 30, "step_gamma": 0.1, "color_jitter": 0.4, "hue": 0.25,
        "workers": args.workers, "amp": args.amp, "device": args.device, "sampler": "random",
    }  # fmt: skip
    if args.smoke:
        options.update(img_size=80, epochs=2, batch_size=16, max_steps_per_epoch=3, workers=0, log_every=0)
        if args.pretrained is None:  # fine-tune the shipped synthetic-world backbone, as a real run fine-tunes
            options.update(model="resnet10t", pretrained="synth")
    release = kernel_release(args, image_size=96)
    run = train_run(release, out / "run", **options)
    preds, val = predict_run(run.run_dir, release, out / "predictions", tta="center", amp=args.amp)
    result = submit(release, preds["test"], out / "submission.csv")
    summary = {
        "val_top1_error": val["top1_error"],
        "val_top3_error": val["top3_error"],
        "published_val_top1_error": round(1 - 0.6020, 4) if args.year == "2018" else None,
        "published_val_top3_error": round(1 - 0.7791, 4) if args.year == "2018" else None,
        **result,
    }
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
