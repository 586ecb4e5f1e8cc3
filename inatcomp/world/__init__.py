"""The synthetic world: an iNaturalist observation export with photos, for demos, tests, benchmarks and pretraining.

It holds the taxonomy of a world (:mod:`~inatcomp.world.taxa`: generated, or sampled from a real one), the
observations drawn for it (:mod:`~inatcomp.world.observations`), the writing of the tables
(:mod:`~inatcomp.world.tables`) and of the photos (:mod:`~inatcomp.world.photos`), both run by
:func:`write_export` (:mod:`~inatcomp.world.synth`); the photos' rendering (:mod:`~inatcomp.world.render`) from
body plans (:mod:`~inatcomp.world.bodyplan`, drawn with :mod:`~inatcomp.world.shapes`); and a contact sheet of
an export (:mod:`~inatcomp.world.preview`). It may import only ``inatcomp.formats``, ``inatcomp.fileio`` and
``inatcomp.options``. The re-exports below are eager: every way into the package goes through
:mod:`~inatcomp.world.synth`, which needs numpy, pandas and OpenCV anyway, and none of its modules imports
torch; the preview adds only Pillow (about 15 ms).
"""

from inatcomp.world.bodyplan import Look, plan_shapes
from inatcomp.world.observations import GeneratedExport, generate_export
from inatcomp.world.photos import render_photos
from inatcomp.world.preview import sibling_preview
from inatcomp.world.render import CameraStyle, Genes, PhotoPose, encode_jpeg, render_photo, species_genes
from inatcomp.world.synth import SynthConfig, write_export
from inatcomp.world.tables import EXPORT_TABLES, write_table
from inatcomp.world.taxa import REAL_TAXONOMY_COLUMNS, SynthTaxonomy, World, generate_taxonomy, load_real_taxonomy

__all__ = [
    "EXPORT_TABLES",
    "REAL_TAXONOMY_COLUMNS",
    "CameraStyle",
    "GeneratedExport",
    "Genes",
    "Look",
    "PhotoPose",
    "SynthConfig",
    "SynthTaxonomy",
    "World",
    "encode_jpeg",
    "generate_export",
    "generate_taxonomy",
    "load_real_taxonomy",
    "plan_shapes",
    "render_photo",
    "render_photos",
    "sibling_preview",
    "species_genes",
    "write_export",
    "write_table",
]
