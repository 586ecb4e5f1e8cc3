"""The iNat2018 winner's recipe: covariance pooling, higher resolution, val fine-tuning, dense TTA, an ensemble.

First place in 2018 (private top-3 error 0.12858, docs/formats.md §5) replaced global average pooling by
iSQRT-COV (a covariance matrix of the last feature map, normalised by a Newton–Schulz matrix square root),
trained at a higher resolution, fine-tuned on the balanced val set with a small learning rate, predicted with
dense multi-crop, multi-scale views, and averaged several models. Here, for each ``--models`` entry:

1. train with ``--head isqrtcov`` on train, keeping a minival (a tenth of val, by observer) for model choice;
2. fine-tune on the rest of val for a few epochs (``kernels/configs/val_finetune.yaml``), and report the
   minival gain;
3. predict minival and test with the ``multiscale`` TTA preset;

then average the members into one submission.

    python kernels/winner_2018.py --data /data/inat2018 --models resnet152 resnet101 --img-size 448 \\
        --pretrained-dir W/
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from inatcomp.build import split_val
from inatcomp.pipeline import (
    add_kernel_arguments,
    ensemble_run,
    kernel_release,
    predict_run,
    run_kernel,
    submit,
    train_run,
    write_summary,
)

CONFIGS = Path(__file__).resolve().parent / "configs"


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    parser = argparse.ArgumentParser(prog="winner_2018", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet152", "resnet101"])
    parser.add_argument("--pretrained-dir", help="folder of local weights <model>.safetensors")
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--head-dim", type=int, default=256, help="channels before the covariance (d(d+1)/2 out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    add_kernel_arguments(parser, out="runs/winner_2018", year=False)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Train, val-fine-tune and predict each member, ensemble, submit; returns the summary."""
    out = Path(args.out)
    options = {
        "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": "sgd", "schedule": "cosine", "warmup_epochs": 1, "head": "isqrtcov", "head_dim": args.head_dim,
        "workers": args.workers, "amp": args.amp,
    }  # fmt: skip
    models, finetune_epochs = list(args.models), args.finetune_epochs
    if args.smoke:
        models, finetune_epochs = ["resnet10t", "resnet10t"], 1
        options.update(img_size=96, head_dim=16, epochs=2, batch_size=16, max_steps_per_epoch=4, workers=0, log_every=0)
    release = kernel_release(args, image_size=128, preset="inat2018")
    minival_dir = out / "minival"
    split_val(release.val, minival_dir, minival_frac=0.1 if not args.smoke else 0.3, seed=0)
    held_out = dataclasses.replace(release, val=minival_dir / "minival.json")
    summary: dict = {}
    members: dict[str, list[Path]] = {"val": [], "test": []}
    for i, model in enumerate(models):
        name = f"{i}_{model}"
        pretrained = str(Path(args.pretrained_dir) / f"{model}.safetensors") if args.pretrained_dir else None
        if args.smoke and pretrained is None:
            pretrained = "synth"  # the shipped synthetic-world backbone of the smoke's resnet10t
        base = train_run(held_out, out / "runs" / name, model=model, pretrained=pretrained, seed=i, **options)
        tuned = train_run(
            held_out, out / "runs" / f"{name}_valft", config_file=CONFIGS / "val_finetune.yaml",
            init=base.run_dir / "best.safetensors", train=minival_dir / "val.json", epochs=finetune_epochs,
            workers=options["workers"], amp=args.amp, seed=i, log_every=options.get("log_every", 20),
            max_steps_per_epoch=options.get("max_steps_per_epoch"),
        )  # fmt: skip
        before, after = base.metrics[-1]["val_top1_error"], tuned.metrics[-1]["val_top1_error"]
        summary[f"{name}_minival_top1_error_before_finetune"] = before
        summary[f"{name}_minival_top1_error_after_finetune"] = after
        preds, _ = predict_run(tuned.run_dir, held_out, out / "predictions" / name, tta="multiscale", amp=args.amp)
        for part in members:
            members[part].append(preds[part])
    combined, minival = ensemble_run(members, held_out, out / "predictions" / "ensemble")
    summary.update(ensemble_minival_top1_error=minival["top1_error"], ensemble_minival_top3_error=minival["top3_error"])
    summary.update(submit(release, combined["test"], out / "submission.csv"))
    summary["published_private_top3_error"] = 0.12858
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
