"""The iNat2018 runner-up's recipe: balanced batches, label and taxonomy smoothing, upper windows, an ensemble.

Second place in 2018 (private top-3 error 0.13981, docs/formats.md §5) trained with class-balanced
batches, label smoothing and taxonomy-aware smoothing (part of the smoothing mass goes to the true species'
genus and family), predicted with extra views along the upper part of each photo (subjects sit high in
iNaturalist photos), and averaged several models. Here: each ``--models`` entry is trained with that recipe,
predicted with the ``upper`` TTA preset, and the members are averaged (mean probability) into one submission.

    python kernels/runner_up_2018.py --data /data/inat2018 --models resnet50 inception_v3 --pretrained-dir W/

``--pretrained-dir`` holds local timm weights named ``<model>.safetensors``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    parser = argparse.ArgumentParser(prog="runner_up_2018", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "inception_v3"])
    parser.add_argument("--pretrained-dir", help="folder of local weights <model>.safetensors")
    parser.add_argument("--img-size", type=int, default=299)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    add_kernel_arguments(parser, out="runs/runner_up_2018", year=False)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Train each member, predict with upper windows, ensemble, submit; returns the summary."""
    out = Path(args.out)
    options = {
        "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": "sgd", "schedule": "cosine", "warmup_epochs": 1, "sampler": "class-balanced",
        "label_smoothing": args.label_smoothing, "taxonomy_smoothing": True, "workers": args.workers, "amp": args.amp,
    }  # fmt: skip
    models = list(args.models)
    if args.smoke:
        models = ["resnet10t", "resnet10t"]
        options.update(img_size=64, epochs=2, batch_size=16, max_steps_per_epoch=4, workers=0, log_every=0)
    release = kernel_release(args, image_size=80, preset="inat2018")
    summary: dict = {}
    members: dict[str, list[Path]] = {"val": [], "test": []}
    for i, model in enumerate(models):
        name = f"{i}_{model}"
        pretrained = str(Path(args.pretrained_dir) / f"{model}.safetensors") if args.pretrained_dir else None
        if args.smoke and pretrained is None:
            pretrained = "synth"  # the shipped synthetic-world backbone of the smoke's resnet10t
        run = train_run(release, out / "runs" / name, model=model, pretrained=pretrained, seed=i, **options)
        preds, val = predict_run(run.run_dir, release, out / "predictions" / name, tta="upper", amp=args.amp)
        summary[f"{name}_val_top3_error"] = val["top3_error"]
        for part in members:
            members[part].append(preds[part])
    combined, val = ensemble_run(members, release, out / "predictions" / "ensemble")
    summary.update(ensemble_val_top1_error=val["top1_error"], ensemble_val_top3_error=val["top3_error"])
    summary.update(submit(release, combined["test"], out / "submission.csv"))
    summary["published_private_top3_error"] = 0.13981
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
