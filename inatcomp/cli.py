"""The ``inatcomp`` command: one subcommand per stage, each a thin call into the library."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Each subcommand's options, built only for the command being run (get_args_parser).
from inatcomp.arguments import (
    add_average_arguments,
    add_build_arguments,
    add_demo_arguments,
    add_ensemble_arguments,
    add_export_arguments,
    add_geoprior_arguments,
    add_leaderboard_arguments,
    add_predict_arguments,
    add_pretrain_arguments,
    add_score_arguments,
    add_score_pred_arguments,
    add_split_val_arguments,
    add_submit_arguments,
    add_synth_arguments,
    add_synth_preview_arguments,
    add_train_arguments,
    add_validate_arguments,
)

_logger = logging.getLogger("inatcomp")


def _cmd_synth(args: argparse.Namespace) -> int:
    from inatcomp.world.synth import SynthConfig, write_export

    config = SynthConfig(
        species=args.species,
        photos=args.photos,
        seed=args.seed,
        image_size=args.image_size,
        images=not args.no_images,
        gzip=args.gzip,
        taxonomy=args.taxonomy,
        workers=args.workers,
    )
    counts = write_export(args.out, config)
    _logger.info("export in %s: %s", args.out, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_synth_preview(args: argparse.Namespace) -> int:
    from inatcomp.world.preview import sibling_preview

    names = sibling_preview(args.export, args.out, per_species=args.per_species, seed=args.seed)
    _logger.info("wrote %s: a row each of %s", args.out, " and ".join(names))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from inatcomp.formats.kinds import FileKind
    from inatcomp.formats.validate import validate_file

    kind = FileKind(args.kind) if args.kind else None
    year = None
    if args.against:
        from inatcomp.predict.submission import validate_submission

        year = kind.value.removeprefix("submission_") if kind and kind.value.startswith("submission_") else None
    failed = False
    for path in args.paths:
        problems = validate_submission(path, args.against, format=year) if args.against else validate_file(path, kind)
        for problem in problems:
            sys.stdout.write(f"{problem}\n")
        if problems:
            failed = True
        else:
            _logger.info("%s: valid", path)
    return 1 if failed else 0


def _cmd_score(args: argparse.Namespace) -> int:
    import json

    from inatcomp.formats.competitions import SubmissionFormat
    from inatcomp.score.report import score_markdown, write_score_report
    from inatcomp.score.scoring import score_file

    result = score_file(
        args.submission,
        args.solution,
        format=SubmissionFormat(args.format) if args.format else None,
        k=args.k,
        dataset=args.dataset,
        max_bytes=_max_bytes(args),
    )
    if args.report:
        write_score_report(result, args.report)
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n" if args.json else score_markdown(result))
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from inatcomp.formats.competitions import SubmissionFormat
    from inatcomp.score.leaderboard import build_leaderboard, leaderboard_markdown, write_leaderboard

    entries = build_leaderboard(
        args.submissions,
        args.solution,
        format=SubmissionFormat(args.format) if args.format else None,
        max_bytes=_max_bytes(args),
    )
    if args.out:
        write_leaderboard(entries, args.out)
    sys.stdout.write(leaderboard_markdown(entries))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from inatcomp.build.fetch import FetchAbortedError, FetchSettings
    from inatcomp.build.release import build_dataset
    from inatcomp.build.rules import PhotoChoice, Preset, rule_overrides, rules_for

    overrides = {rule.name: getattr(args, rule.name) for rule in rule_overrides()}
    if args.photo_choice:
        overrides["photo_choice"] = PhotoChoice(args.photo_choice)
    if args.all_grades:
        overrides["research_only"] = False
    if args.allow_informal_names:
        overrides["allow_informal_names"] = True
    rules = rules_for(Preset(args.preset), **overrides)
    fetch = None
    if not args.photo_url and (args.photo_cache or args.retry_failed):
        # Without a URL these would be ignored, and the photos read from EXPORT/photos instead of the cache named.
        raise ValueError(
            "--photo-cache and --retry-failed go with --photo-url (without it, photos come from EXPORT/photos)"
        )
    if args.photo_url:
        fetch = FetchSettings(
            url=args.photo_url,
            cache=Path(args.photo_cache or Path(args.export) / "photos"),
            size=args.photo_size,
            workers=args.fetch_workers,
            max_rps=args.max_rps,
            read_timeout=args.fetch_timeout,
            retry_failed=args.retry_failed,
        )
    try:
        result = build_dataset(
            args.export,
            args.out,
            rules=rules,
            seed=args.seed,
            resample_seed=args.resample_seed,
            images=not args.no_images,
            workers=args.workers,
            overwrite=args.overwrite,
            fetch=fetch,
            licenses=args.licenses.split(",") if args.licenses else None,
            memory_limit=args.memory_limit,
            temp_dir=args.temp_dir,
        )
    except FetchAbortedError as error:  # the server, not the input: nothing to fix in the command
        _logger.error("%s", error)
        return 1
    _logger.info("release in %s: %d classes, images %s", args.out, result.classes, result.images)
    return 0


def _cmd_split_val(args: argparse.Namespace) -> int:
    from inatcomp.build.minival import split_val

    sizes = split_val(args.val_json, args.out, minival_frac=args.minival_frac, seed=args.seed, per_class=args.per_class)
    _logger.info("wrote %s: %s", args.out, sizes)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from inatcomp.train import TrainConfig, distributed_context, resolve_config, train

    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    if args.resume:
        from pathlib import Path

        config_file = Path(args.resume) / "config.yaml"
        config = resolve_config(config_file=config_file, overrides={**overrides, "out": args.resume})
    else:
        config = resolve_config(config_file=args.config, overrides=overrides)
    result = train(config, resume=bool(args.resume))
    last = result.metrics[-1] if result.metrics else {}
    if distributed_context().is_main:  # under torchrun: once, from rank 0
        _logger.info("run in %s; last epoch: %s", result.run_dir, last)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from inatcomp.predict.engine import predict

    predict(
        checkpoint=args.checkpoint,
        data=args.data,
        images=args.images,
        tta=args.tta,
        views=args.views,
        average=args.average,
        out=args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        fold_bn=not args.no_fold_bn,
        geo_prior=args.geo_prior,
        locations=args.locations,
        tau_norm=args.tau_norm,
        decode=args.decode,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone wrote the folder, and adjusts it
        _adjust_in_place(args, args.out)
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from inatcomp.predict.ensemble import ensemble, fit_weights

    weights, extra = args.weights, None
    if args.fit_weights:
        if args.weights or not args.labels or len(args.fit_weights) != len(args.predictions):
            _logger.error("--fit-weights takes one val prediction per member, with --labels and without --weights")
            return 2
        fit = fit_weights(args.fit_weights, args.labels, mode=args.mode, steps=args.grid)
        weights = fit.weights
        extra = {"fit": {"val_predictions": args.fit_weights, "labels": args.labels, **fit.to_dict()}}
    ensemble(args.predictions, out=args.out, weights=weights, mode=args.mode, chunk_rows=args.chunk_rows,
             extra_header=extra)  # fmt: skip
    _adjust_in_place(args, args.out)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from inatcomp.predict.submission import write_submission

    adjustment = _logit_adjustment(args, args.predictions)
    write_submission(args.predictions, format=args.format, out=args.out, chunk_rows=args.chunk_rows,
                     logit_adjust=adjustment[:2] if adjustment else None)  # fmt: skip
    return 0


def _cmd_score_pred(args: argparse.Namespace) -> int:
    import json

    from inatcomp.score.scoring import score_predictions

    result = score_predictions(
        args.predictions, args.labels, k=args.k, chunk_rows=args.chunk_rows, dataset=args.dataset
    )
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        from inatcomp.score.report import prediction_score_markdown

        sys.stdout.write(prediction_score_markdown(result))
    return 0


def _cmd_geoprior_train(args: argparse.Namespace) -> int:
    from inatcomp.predict.geoprior import PriorConfig, train_prior

    config = PriorConfig(
        use_dates=not args.no_dates, hidden=args.hidden, layers=args.layers, dropout=args.dropout, epochs=args.epochs,
        batch_size=args.batch_size, min_steps_per_epoch=args.min_steps_per_epoch, lr=args.lr,
        pos_weight=args.pos_weight, seed=args.seed, device=args.device, threads=args.threads,
    )  # fmt: skip
    prior = train_prior(args.train, locations=args.locations, config=config, out=args.out)
    _logger.info("geo prior in %s: %s", prior.path, prior.metadata["counts"])
    return 0


def _cmd_geoprior_apply(args: argparse.Namespace) -> int:
    from inatcomp.predict.geocombine import apply_prior

    result = apply_prior(args.predictions, prior=args.prior, out=args.out, locations=args.locations,
                         chunk_rows=args.chunk_rows)  # fmt: skip
    _logger.info("wrote %s: %s", args.out, result)
    return 0


def _cmd_geoprior_evaluate(args: argparse.Namespace) -> int:
    import json

    from inatcomp.predict.geocombine import evaluate_prior

    result = evaluate_prior(args.predictions, args.labels, prior=args.prior, locations=args.locations, k=args.k,
                            chunk_rows=args.chunk_rows)  # fmt: skip
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_geoprior_map(args: argparse.Namespace) -> int:
    from inatcomp.predict.geomap import plot_prior_map

    day = None if args.day is None else (args.day - 1) / 365
    plot_prior_map(args.prior, out=args.out, category_id=args.category, day=day, resolution=args.resolution)
    _logger.info("wrote %s", args.out)
    return 0


#: ``inatcomp geoprior``'s commands (``geoprior_command``) and their functions.
_GEOPRIOR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _cmd_geoprior_train,
    "apply": _cmd_geoprior_apply,
    "evaluate": _cmd_geoprior_evaluate,
    "map": _cmd_geoprior_map,
}


def _cmd_geoprior(args: argparse.Namespace) -> int:
    return _GEOPRIOR_COMMANDS[args.geoprior_command](args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from inatcomp.demo import DEMO_EPOCHS, run_demo

    return run_demo(
        args.out, species=args.species, photos=args.photos, seed=args.seed, epochs=args.epochs or DEMO_EPOCHS,
        pretrained=args.pretrained, readme=args.readme, started_at=args.started_at,
    )  # fmt: skip


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from inatcomp.fileio import replace_generated_block
    from inatcomp.train.pretrain import PretrainConfig, manifest_markdown, pretrain

    config = PretrainConfig(
        out=args.out, species=args.species, photos=args.photos, model=args.model, img_size=args.img_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
        install=args.install,
    )  # fmt: skip
    entry = pretrain(config, command=args.command_line)
    _logger.info("pretrained %s: %s (val top-1 error %s)", entry["model"], entry["weights"],
                 entry["result"]["val_top1_error"])  # fmt: skip
    if args.readme:
        replace_generated_block(args.readme, "pretrain", manifest_markdown(entry))
        _logger.info("wrote this run's figures into %s", args.readme)
    return 0


def _max_bytes(args: argparse.Namespace) -> int | None:
    """``--max-size-mb`` in bytes; None (the defaults and the row bound) when it was not given."""
    return None if args.max_size_mb is None else int(args.max_size_mb * 1e6)


def _logit_adjustment(args: argparse.Namespace, predictions: str) -> Any:
    """(τ, prior, fit) for ``predictions`` as the options ask, or ``None``."""
    from inatcomp.predict.longtail import resolve_adjustment

    return resolve_adjustment(
        predictions, tau=args.logit_adjust, fit_on=args.fit_logit_adjust, labels=args.labels,
        target=args.target_prior, prior=args.prior,
    )  # fmt: skip


def _adjust_in_place(args: argparse.Namespace, predictions: str) -> None:
    """Logit-adjust a prediction folder just written, when asked (its header records it)."""
    adjustment = _logit_adjustment(args, predictions)
    if adjustment is not None:
        from inatcomp.predict.longtail import adjust_predictions

        tau, prior, fit = adjustment
        adjust_predictions(predictions, tau=tau, prior=prior, fit=fit, out=predictions)


def _cmd_average(args: argparse.Namespace) -> int:
    from inatcomp.models.average import average_checkpoints, epoch_checkpoints

    sources = args.checkpoints
    if args.last is not None:
        if len(sources) != 1:
            raise ValueError("--last N averages the kept epochs of one run: give one run folder")
        sources = epoch_checkpoints(sources[0], args.last)
    average_checkpoints(sources, out=args.out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from inatcomp.predict.deploy import export_model

    report = export_model(args.checkpoint, format=args.format, out=args.out, int8=args.int8, val=args.val,
                          images=args.images)  # fmt: skip
    _logger.info("wrote %s (logits within %.2g of PyTorch)", report.path, report.max_abs_diff)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# The options whose defaults and choices live in a command's own (torch-using or slow) module: imported here, by
# the function that runs only for that command; inatcomp.arguments builds the options from them.


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from inatcomp.train.config import TrainConfig

    add_train_arguments(parser, config=TrainConfig)


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    from inatcomp.train.pretrain import PRETRAIN_DEFAULTS

    add_pretrain_arguments(parser, defaults=PRETRAIN_DEFAULTS)


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    from inatcomp.predict.engine import PREDICT_DEFAULTS
    from inatcomp.predict.tta import AverageMode, TTAMode

    add_predict_arguments(parser, defaults=PREDICT_DEFAULTS, tta_modes=TTAMode, average_modes=AverageMode)


def _ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    from inatcomp.predict.ensemble import EnsembleMode

    add_ensemble_arguments(parser, modes=EnsembleMode)


def _geoprior_arguments(parser: argparse.ArgumentParser) -> None:
    from inatcomp.predict.geoprior import PriorConfig

    add_geoprior_arguments(parser, defaults=PriorConfig())


_Options = Callable[[argparse.ArgumentParser], None]
_Run = Callable[[argparse.Namespace], int]

#: ``inatcomp``'s subcommands in the order ``--help`` lists them: name, one-line help, the function adding its
#: options, the function running it.
_COMMANDS: tuple[tuple[str, str, _Options, _Run], ...] = (
    ("synth", "write a synthetic iNaturalist observation export with photos", add_synth_arguments, _cmd_synth),
    ("synth-preview", "a PNG of photos of two sibling species of a synthetic export", add_synth_preview_arguments,
     _cmd_synth_preview),
    ("validate", "check files against their schemas and cross-file rules", add_validate_arguments, _cmd_validate),
    ("build", "build a challenge dataset from an observation export", add_build_arguments, _cmd_build),
    ("split-val", "split a val JSON into val and minival by observer", add_split_val_arguments, _cmd_split_val),
    ("train", "train a timm model on a competition dataset", _train_arguments, _cmd_train),
    ("pretrain", "pretrain a backbone on a synthetic world no competition shares taxa with", _pretrain_arguments,
     _cmd_pretrain),
    ("demo", "run the main job on a synthetic export", add_demo_arguments, _cmd_demo),
    ("score", "top-1/top-k error of a submission (Public, Private, all) and analyses", add_score_arguments,
     _cmd_score),
    ("leaderboard", "Kaggle-like public/private leaderboard of submissions", add_leaderboard_arguments,
     _cmd_leaderboard),
    ("average", "average checkpoints of one model: a run's last epochs, or a model soup", add_average_arguments,
     _cmd_average),
    ("export", "export a checkpoint's eval model as ONNX or TorchScript (optionally int8)", add_export_arguments,
     _cmd_export),
    ("predict", "predict a competition JSON with test-time augmentation", _predict_arguments, _cmd_predict),
    ("ensemble", "combine prediction folders (streaming)", _ensemble_arguments, _cmd_ensemble),
    ("submit", "write a submission CSV from a prediction folder", add_submit_arguments, _cmd_submit),
    ("score-pred", "top-1/top-k error of a prediction folder against val labels", add_score_pred_arguments,
     _cmd_score_pred),
    ("geoprior", "a spatio-temporal prior (place, date) combined with image predictions", _geoprior_arguments,
     _cmd_geoprior),
)  # fmt: skip


def get_args_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``inatcomp`` command.

    Args:
        command: Fill in only this subcommand's options (the others are listed, with their help line, but
            left empty; ``""`` fills none). :func:`main` passes the command being run, so a command imports only
            what its own options need: ``score`` never pays for the training options' modules. ``None`` builds
            them all.
    """
    parser = argparse.ArgumentParser(prog="inatcomp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text, add_arguments, run in _COMMANDS:
        command_parser = sub.add_parser(name, help=text, description=text)
        if command is None or command == name:
            add_arguments(command_parser)
            command_parser.set_defaults(func=run)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inatcomp`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser(_command_of(argv) or "").parse_args(argv)  # "": the command list alone
    args.command_line = shlex.join(["inatcomp", *argv])  # what was asked for, as a shell would rerun it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ValueError as error:  # bad input: the library's messages name the file and what is wrong
        _logger.error("%s", error)
        return 2
    except OSError as error:  # a file the command was given or told to write: missing, unreadable, disk full
        where = f"{error.filename}: " if error.filename else ""
        _logger.error("%s%s", where, error.strerror or error)
        return 2
    except KeyboardInterrupt:
        _logger.error("interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - a bug, not bad input: one line (-v adds the traceback), exit 3
        _logger.error("internal error: %s: %s", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        _logger.debug("traceback of the internal error", exc_info=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
