"""Dataset build at scale: metadata-only build time ≤ 2× the time to parse the columns it uses with pyarrow,
measured side by side in one run, and peak memory growing linearly with the export (≤ 8 GB at 30 M photos).

Exports of 0.3 M, 3 M and 30 M photos (``--quick``: 30 k and 0.3 M). Up to 3 M photos the export is generated
(:mod:`inatcomp.world.synth`); the 30 M export is ten copies of a generated 3 M one with their own ids
(:func:`replicate_export`), since the generator holds a whole export in memory. It needs about 7 GB of disk.

Each measurement runs in a child process of its own so that its peak resident memory (``VmHWM``) is its
own. The parse baseline reads exactly the columns the builder reads (``inatcomp.build.BUILD_COLUMNS``), with the
same pyarrow reader. The cores are shared, so the parse and the build run in turn several times and the ratio
is the median of the pairs' ratios.

Each run also reports its CPU seconds (user and system, all threads). On this kind of virtual machine the first
touch of memory that no process has touched lately is slow and erratic (1 GB of ``np.ones``: 0.06 s when the
pages were used a moment before, up to 2.2 s when not), and the build touches more memory than the parse. So at
the largest size the pairs are measured a second time with the memory pre-faulted: a child touching more than the
build's peak runs just before each parse and each build, and that ratio is reported beside the plain one.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import Result
from inatcomp.fileio import replace_generated_block

_logger = logging.getLogger(__name__)

_PARSE = """
import json, time
from benchmarks.common import cpu_seconds, peak_rss_mb
from inatcomp.build import BUILD_COLUMNS
from inatcomp.build.export import find_table, read_columns
start, cpu = time.perf_counter(), cpu_seconds()
rows = sum(read_columns(find_table({export!r}, name), name, cols).num_rows for name, cols in BUILD_COLUMNS.items())
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "rss_mb": peak_rss_mb(), **cpu_seconds(cpu)}}))
"""
_BUILD = """
import json, logging, time
from benchmarks.common import cpu_seconds, peak_rss_mb
from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
logging.basicConfig(level=logging.WARNING)
start, cpu = time.perf_counter(), cpu_seconds()
result = build_dataset({export!r}, {out!r}, rules=rules_for(Preset.INAT2018), images=False)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "rss_mb": peak_rss_mb(), **cpu_seconds(cpu), "classes": result.classes,
                  "images": result.images, "removed": result.audit["removed"]}}))
"""

_SYNTH = """
from inatcomp.world.synth import SynthConfig, write_export
write_export({export!r}, SynthConfig(species={species}, photos={photos}, seed=0, images=False))
print("{{}}")
"""
_PREFAULT = """
import numpy as np
np.ones({megabytes} << 17)  # touch the memory, then give it back
print("{{}}")
"""
_REPLICATE = """
from benchmarks.build import replicate_export
replicate_export({source!r}, {export!r}, {copies}, compress={compress})
print("{{}}")
"""
#: Whole-process wall time and peak RSS of a command (its own child: ru_maxrss of children is theirs alone).
_WHOLE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(json.dumps({'seconds': time.perf_counter() - start,\n"
    "                  'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
)
#: DuckDB's own scan of the columns the build uses, typed as the build types them (the ratio's denominator).
_DUCKDB_PARSE = """
import duckdb
from inatcomp.build import BUILD_COLUMNS
from inatcomp.build.engine import typed_scan
from inatcomp.build.export import find_table
con = duckdb.connect(config={{"memory_limit": {limit!r}, "temp_directory": {tmp!r}}})
for name, cols in BUILD_COLUMNS.items():
    counts = ", ".join(f'count("{{c}}")' for c in cols)
    con.sql(f"SELECT {{counts}} FROM ({{typed_scan(con, find_table({export!r}, name), name, cols)}})").fetchall()
"""
#: Photos per observation of a synthetic export (1–4, mean about 1.73): sizes are asked in observations.
_PHOTOS_PER_OBSERVATION = 1.73
#: Observations of the scale table (``--scale`` alone).
SCALE_OBSERVATIONS = (10_000_000, 30_000_000, 100_000_000)
SCALE_BEGIN, SCALE_END = (
    "<!-- build-scale:begin (written by benchmarks/build.py --scale) -->",
    "<!-- build-scale:end -->",
)
#: Above this many photos an export is made as copies of one of this size (the generator holds it all in memory).
SYNTH_LIMIT = 3_000_000


def replicate_export(source: str, dest: str, copies: int, *, compress: bool = False) -> None:
    """Write ``copies`` copies of an export's tables one after another, each with its own observers, observations
    and photos: ids shifted past the previous copy's, a uuid's first two hex digits replaced by the copy's number.

    The taxa are shared, so the copies multiply the observers and photos of every species (about what a larger
    export of the same species looks like to the builder: more photos per class, more observers to place).
    """
    import os

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    os.makedirs(dest, exist_ok=True)
    read = pacsv.ReadOptions(block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    tables = {}
    for name in ("taxa", "observers", "observations", "photos"):
        with open(f"{source}/{name}.csv") as handle:
            header = handle.readline().rstrip("\n").split("\t")
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
        tables[name] = pacsv.read_csv(f"{source}/{name}.csv", read_options=read, parse_options=parse,
                                      convert_options=convert)  # fmt: skip
    plain = pacsv.WriteOptions(delimiter="\t", quoting_style="none", quoting_header="none")

    def sink(name: str) -> object:  # gzipped tables with compress, as iNaturalist ships them
        return pa.CompressedOutputStream(f"{dest}/{name}.csv.gz", "gzip") if compress else f"{dest}/{name}.csv"

    pacsv.write_csv(tables.pop("taxa"), sink("taxa"), write_options=plain)
    shifts = {c: int(pc.max(tables[t][c].cast(pa.int64())).as_py()) + 1 for t, c in
              (("observers", "observer_id"), ("photos", "photo_id"))}  # fmt: skip
    for name, table in tables.items():
        with pacsv.CSVWriter(sink(name), table.schema, write_options=plain) as writer:
            for copy in range(copies):
                columns = {}
                for column in table.column_names:
                    values = table[column]
                    if column in shifts:
                        values = pc.add(values.cast(pa.int64()), copy * shifts[column]).cast(pa.string())
                    elif column.endswith("uuid"):
                        values = pc.binary_join_element_wise(f"{copy:02x}", pc.utf8_slice_codeunits(values, 2), "")
                    columns[column] = values
                writer.write_table(pa.table(columns))


def _child(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(photos: int, *, pairs: int = 3, prefault: bool = False) -> dict:
    """Synthesise an export of ``photos`` photos, then parse it and build it in turn ``pairs`` times.

    Every run is a child process; the export is synthesised in a child too, so the parent stays small while
    the children are measured. Returns the median pair (by the ratio of build to parse time) with the
    ratios of all pairs, and the largest peak memory of the builds. With ``prefault``, the pairs are run a
    second time, each parse and build just after a child touching more memory than the first builds' peak,
    and returned as ``prefaulted`` (same keys).
    """
    with tempfile.TemporaryDirectory() as tmp:
        export = f"{tmp}/export"
        if photos <= SYNTH_LIMIT:
            _child(_SYNTH.format(export=export, species=min(10_000, max(100, photos // 300)), photos=photos))
        else:  # copies of a generated export
            copies = -(-photos // SYNTH_LIMIT)
            _child(_SYNTH.format(export=f"{tmp}/one", species=10_000, photos=photos // copies))
            _child(_REPLICATE.format(source=f"{tmp}/one", export=export, copies=copies))
            shutil.rmtree(f"{tmp}/one")
        result = _pairs(export, f"{tmp}/out", pairs, prefault_mb=0)
        if prefault:
            megabytes = int(result["build"]["rss_mb"] * 1.25) + 512
            result["prefaulted"] = {**_pairs(export, f"{tmp}/warm", pairs, prefault_mb=megabytes), "mb": megabytes}
    return {"photos": photos, **result}


def _pairs(export: str, out: str, pairs: int, *, prefault_mb: int) -> dict:
    """Parse and build ``pairs`` times in turn (each after touching ``prefault_mb`` MB in a child, if any)."""
    runs = []
    for k in range(pairs):
        measured = []
        for code in (_PARSE.format(export=export), _BUILD.format(export=export, out=f"{out}{k}")):
            if prefault_mb:
                _child(_PREFAULT.format(megabytes=prefault_mb))
            measured.append(_child(code))
        parse, build = measured
        runs.append((build["seconds"] / parse["seconds"], parse, build))
    _, parse, build = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    build = {**build, "rss_mb": max(r[2]["rss_mb"] for r in runs)}
    return {"parse": parse, "build": build, "ratios": [r[0] for r in runs]}


def run(*, quick: bool = False) -> list[Result]:
    """Measure the time ratio at the largest size and peak memory at every size."""
    sizes = (30_000, 300_000) if quick else (300_000, 3_000_000, 30_000_000)
    runs = [measure(n, prefault=n == sizes[-1]) for n in sizes]
    for r in runs:
        _logger.info(
            "%d photos: parse %.1fs (%.1f CPU s, %.0f MB), build %.1fs (%.1f CPU s, %.0f MB), ratios %s, %d classes, "
            "images %s",
            r["photos"], r["parse"]["seconds"], r["parse"]["cpu"], r["parse"]["rss_mb"], r["build"]["seconds"],
            r["build"]["cpu"], r["build"]["rss_mb"], [round(x, 2) for x in r["ratios"]], r["build"]["classes"],
            r["build"]["images"],
        )  # fmt: skip
    largest = runs[-1]
    _logger.info("audit at %d photos: %s", largest["photos"], json.dumps(largest["build"]["removed"]))
    ratio = largest["build"]["seconds"] / largest["parse"]["seconds"]
    pairs = ", ".join(f"{r:.2f}" for r in largest["ratios"])
    warm = largest["prefaulted"]
    warm_pairs = ", ".join(f"{r:.2f}" for r in warm["ratios"])
    smaller = "; ".join(
        f"at {r['photos'] / 1e6:g} M: {r['build']['seconds']:.1f} s / {r['parse']['seconds']:.1f} s = "
        f"{r['build']['seconds'] / r['parse']['seconds']:.2f}"
        for r in runs[:-1]
    )
    # Linear fit through the two largest sizes: the fixed cost (interpreter, libraries) is not per photo.
    small = runs[-2]
    slope = (largest["build"]["rss_mb"] - small["build"]["rss_mb"]) / (largest["photos"] - small["photos"]) * 1e6
    projected = (largest["build"]["rss_mb"] + slope * (30e6 - largest["photos"]) / 1e6) / 1024
    memory = ", ".join(f"{r['photos'] / 1e6:g} M: {r['build']['rss_mb']:.0f} MB" for r in runs)
    at_30m = "measured" if largest["photos"] >= 30e6 else "projected"
    return [
        Result(
            goal=f"build --no-images of {largest['photos']:,} photos ≤ 2× pyarrow parse of its columns",
            figure=(
                f"build {largest['build']['seconds']:.1f} s, parse {largest['parse']['seconds']:.1f} s "
                f"(median of {len(largest['ratios'])} pairs run in turn; ratios {pairs}); CPU s (user + system): "
                f"build {largest['build']['cpu']:.1f} ({largest['build']['sys']:.1f} system), parse "
                f"{largest['parse']['cpu']:.1f} ({largest['parse']['sys']:.1f}); with {warm['mb'] / 1024:.1f} GB "
                f"pre-faulted before each run: build {warm['build']['seconds']:.1f} s, parse "
                f"{warm['parse']['seconds']:.1f} s, ratio {warm['build']['seconds'] / warm['parse']['seconds']:.2f} "
                f"(pairs {warm_pairs}); {smaller}"
            ),
            ratio=ratio,
            met=ratio <= 2.0,
        ),
        Result(
            goal="build peak memory ≤ 8 GB at 30 M photos (linear growth)",
            figure=f"{memory}; slope {slope:.0f} MB per M photos, {at_30m} {projected:.1f} GB at 30 M",
            ratio=projected / 8.0,
            met=projected <= 8.0,
        ),
    ]


def _whole(args: list[str]) -> dict:
    """Whole-process wall seconds and peak RSS (MB) of a command."""
    return _child_args([sys.executable, "-c", _WHOLE, *args])


def _child_args(argv: list[str]) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{argv[3:6]}: exit {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_scale(
    observations: int,
    *,
    memory_limit: str,
    tmp_root: str | None = None,
    exports: str | None = None,
    synth_only: bool = False,
) -> dict:
    """Synthesise a gzipped export of about ``observations`` observations, then time DuckDB's scan and the build.

    ``inatcomp synth --no-images --gzip`` streams block by block (:data:`inatcomp.world.synth.BLOCK_PHOTOS`), so
    the export is generated whole at every size. Synth, parse and build each run as a process of their own,
    measured whole (interpreter start included). The export is deleted afterwards unless ``exports`` names a
    folder to keep it in: there an export already made (with its ``synth.json`` figures) is measured again
    without generating it anew, and ``synth_only`` stops after generating it.
    """
    load = os.getloadavg()[0]  # how busy the machine was: a figure from a busy one is not a figure
    photos = int(observations * _PHOTOS_PER_OBSERVATION)
    species = 10_000 if photos >= 3_000_000 else max(100, photos // 300)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        export = f"{exports}/{observations}" if exports else f"{tmp}/export"
        record = os.path.join(export, "synth.json")
        if os.path.exists(record):
            with open(record) as handle:
                synth = json.load(handle)
        else:
            shutil.rmtree(export, ignore_errors=True)  # a generation that was stopped half-way
            synth = _whole([sys.executable, "-m", "inatcomp.cli", "synth", export, "--species", str(species),
                            "--photos", str(photos), "--no-images", "--gzip"])  # fmt: skip
            synth["load"] = load
            with gzip.open(f"{export}/observations.csv.gz", "rb") as handle:
                synth["observations"] = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b"")) - 1
            with open(record, "w") as handle:
                json.dump(synth, handle)
        disk = sum(os.path.getsize(os.path.join(export, f)) for f in os.listdir(export) if f.endswith(".gz"))
        common = {"observations": synth["observations"], "photos": photos, "disk_mb": disk / 2**20,
                  "memory_limit": memory_limit, "synth": synth}  # fmt: skip
        if synth_only:
            return common
        load = os.getloadavg()[0]
        code = _DUCKDB_PARSE.format(limit=memory_limit, tmp=f"{tmp}/spill", export=export)
        parse = _whole([sys.executable, "-c", code])
        build = _whole([
            sys.executable, "-m", "inatcomp.cli", "build", export, f"{tmp}/out", "--preset", "inat2018", "--no-images",
            "--memory-limit", memory_limit, "--temp-dir", tmp,
        ])  # fmt: skip
    return {**common, "parse": parse, "build": build, "load": load}


def scale_markdown(runs: list[dict], command: str) -> str:
    """The scale table, the least-squares slope of build time and peak RSS, and their projection to 300 M."""
    x = [r["observations"] / 1e6 for r in runs]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    loads = (
        ", ".join(f"{r['synth'].get('load', float('nan')):.1f} / {r['load']:.1f}" for r in runs if "load" in r)
        or "not recorded"
    )
    lines = [SCALE_BEGIN, "", f"`{command}` (gzipped tables, inat2018 --no-images)", "",
             f"Machine: {machine}. Date: {datetime.date.today().isoformat()}. 1-minute load average before the synth / "
             f"before the parse and build of each size: {loads}.", "",
             "| observations | export on disk | synth s | synth peak MB | parse s | build s | build peak MB "
             "| build/parse |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r['observations'] / 1e6:.3g} M | {r['disk_mb']:.0f} MB | {r['synth']['seconds']:.0f} | "
            f"{r['synth']['rss_mb']:.0f} | {r['parse']['seconds']:.1f} | {r['build']['seconds']:.1f} | "
            f"{r['build']['rss_mb']:.0f} | {r['build']['seconds'] / r['parse']['seconds']:.2f} |"
        )
    lines.append("")
    if len(runs) >= 2:
        for key, unit in (("seconds", "s"), ("rss_mb", "MB")):
            y = [r["build"][key] for r in runs]
            mx, my = sum(x) / len(x), sum(y) / len(y)
            slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
            at = my + slope * (300 - mx)
            lines.append(
                f"- build {key}: slope {slope:.2f} {unit} per M observations; projected at 300 M: {at:.0f} {unit}"
            )
    else:
        lines.append("- one size only: no slope (run two or more sizes)")
    lines += ["", SCALE_END]
    return "\n".join(lines)


def main() -> None:
    """Print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--photos", type=int, nargs="*", help="measure these sizes instead")
    parser.add_argument(
        "--scale",
        type=int,
        nargs="*",
        metavar="OBSERVATIONS",
        help=f"whole-process synth, parse and build at these sizes (default {SCALE_OBSERVATIONS})",
    )
    parser.add_argument("--memory-limit", default="8GB", help="the build's --memory-limit in --scale (default 8GB)")
    parser.add_argument("--tmp", help="folder for --scale's exports and spills (default the system's)")
    parser.add_argument("--write", action="append", default=[], help="replace the build-scale block in this file")
    parser.add_argument("--exports", help="keep --scale's exports in this folder and reuse the ones already there")
    parser.add_argument("--synth-only", action="store_true", help="with --exports: only generate the exports")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    if args.scale is not None:
        runs = []
        for n in args.scale or SCALE_OBSERVATIONS:
            run_ = measure_scale(n, memory_limit=args.memory_limit, tmp_root=args.tmp, exports=args.exports,
                                 synth_only=args.synth_only)  # fmt: skip
            _logger.info("%s", json.dumps(run_))
            if args.synth_only:
                continue
            runs.append(run_)
            # Written after each size, so an hours-long run that is stopped keeps what it measured.
            text = scale_markdown(runs, "python -m benchmarks.build " + " ".join(sys.argv[1:]))
            for path in args.write:
                replace_generated_block(path, "build-scale", text.removeprefix(SCALE_BEGIN).removesuffix(SCALE_END))
        if runs:
            _logger.info("\n%s", text)
        return
    if args.photos:
        for n in args.photos:
            _logger.info("%s", json.dumps(measure(n)))
        return
    for result in run(quick=args.quick):
        result.log()


if __name__ == "__main__":
    main()
