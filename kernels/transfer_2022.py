"""iNaturalist's 2022 model update: a new taxon set from the previous model, backbone frozen first.

In 2022 iNaturalist grew its vision model from about 55,000 to 60,000 taxa by starting from the previous model:
the classifier rows of taxa in both sets are carried over (matched by taxon, not by position), new taxa start
at the mean row, and only the classifier trains at first; then the last stages of the backbone train too.

1. ``--old-run`` is a run (or checkpoint) trained on the old taxon set; with ``--smoke`` one is trained here
   on a random 70 % of the synthetic release's species;
2. stage 1 (``kernels/configs/transfer.yaml``): classifier only, new taxa at the mean row;
3. stage 2 (``kernels/configs/transfer_unfreeze.yaml``): the last two backbone stages train as well;
4. predict val and test, and submit.

    python kernels/transfer_2022.py --data /data/new_release --year 2021 --old-run runs/old_model
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from inatcomp.pipeline import (
    add_kernel_arguments,
    kernel_release,
    predict_run,
    run_kernel,
    submit,
    subset_categories,
    train_run,
    write_summary,
)

CONFIGS = Path(__file__).resolve().parent / "configs"


def get_args_parser() -> argparse.ArgumentParser:
    """The kernel's options."""
    parser = argparse.ArgumentParser(prog="transfer_2022", description=__doc__.split("\n")[0])
    parser.add_argument("--old-run", help="run folder or checkpoint trained on the old taxon set")
    parser.add_argument("--head-epochs", type=int, default=5, help="stage 1: classifier only")
    parser.add_argument("--epochs", type=int, default=10, help="stage 2: the last two backbone stages too")
    parser.add_argument("--batch-size", type=int, default=64)
    add_kernel_arguments(parser, out="runs/transfer_2022", year=True)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Carry the old model's head to the new taxa, train in two stages, predict and submit; returns the summary."""
    out = Path(args.out)
    options = {"batch_size": args.batch_size, "workers": args.workers, "amp": args.amp}
    head_epochs, epochs = args.head_epochs, args.epochs
    if args.smoke:
        head_epochs, epochs = 1, 1
        options.update(batch_size=16, max_steps_per_epoch=4, workers=0, log_every=0)
    release = kernel_release(args, image_size=80)
    old_run = args.old_run
    if old_run is None:
        if not args.smoke:
            raise ValueError("--old-run is required (a run on the old taxon set)")
        # The old taxon set: a random 70 % of the species, trained briefly.
        old_train, kept = subset_categories(release.train, out / "old" / "train.json", keep=0.7, seed=0)
        old_val, _ = subset_categories(release.val, out / "old" / "val.json", keep=0.7, category_ids=kept)
        old = dataclasses.replace(release, train=old_train, val=old_val)
        old_run = train_run(old, out / "runs" / "old", model="resnet10t", pretrained="synth", img_size=64, epochs=2,
                            lr=0.05, schedule="cosine", **options).run_dir  # fmt: skip
    stage1 = train_run(release, out / "runs" / "new_head", config_file=CONFIGS / "transfer.yaml", init=old_run,
                       epochs=head_epochs, **options)  # fmt: skip
    stage2 = train_run(release, out / "runs" / "new", config_file=CONFIGS / "transfer_unfreeze.yaml",
                       init=stage1.run_dir / "best.safetensors", epochs=epochs, **options)  # fmt: skip
    first = stage1.metrics[-1]
    summary = {
        "taxa_carried": first["taxa_carried"],
        "taxa_added": first["taxa_added"],
        "taxa_dropped": first["taxa_dropped"],
        "stage1_val_top1_error": first["val_top1_error"],
        "stage2_val_top1_error": stage2.metrics[-1]["val_top1_error"],
    }
    preds, val = predict_run(stage2.run_dir, release, out / "predictions", tta="flip", amp=args.amp)
    summary.update(val_top1_error=val["top1_error"], val_top3_error=val["top3_error"])
    summary.update(submit(release, preds["test"], out / "submission.csv"))
    write_summary(out, summary)
    return summary


if __name__ == "__main__":
    run_kernel(get_args_parser, main)
