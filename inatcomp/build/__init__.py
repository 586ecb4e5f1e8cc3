"""Turning an observation export into a challenge dataset: ``inatcomp build``, and ``inatcomp split-val``.

It holds the export reader, the build rules, the photographer-isolated splits and each phase of a build down to the
written release and its audit; it may import :mod:`inatcomp.formats`, :mod:`inatcomp.fileio` and
:mod:`inatcomp.options` (and no torch: ``build`` and ``split-val`` are file commands). The way through: read the
four export tables (:mod:`inatcomp.build.export`) → give every observation a class or a reason why not (roll-up,
hybrids, inactive or unknown taxa, quality grade; leaf genera and inclusion thresholds for ``production``) → keep
the photos per observation the rules allow → put every observer in one split
(:func:`inatcomp.build.splits.assign_observers`) → sample each class to its quotas → resize the images into the
release layout → write the release files, the organizer's private files (solution, provenance) and an audit that
re-checks leakage from the written files.

One module per phase, in the order :func:`build_dataset` (:mod:`~inatcomp.build.release`) runs them:

- :mod:`~inatcomp.build.rules`: the presets' rules (:func:`rules_for`) and the ones the command line overrides.
- :mod:`~inatcomp.build.source`: where the phases read the export: out of core through
  :mod:`~inatcomp.build.engine` (DuckDB), whose :mod:`~inatcomp.build.engine_sampling` runs photos per
  observation, the observer split's counts and the quotas in SQL; or whole in memory.
- :mod:`~inatcomp.build.inclusion`: each observation's class or the reason why not; photos joined to observations.
- :mod:`~inatcomp.build.sampling`: photos per observation, observers' splits, per-class quotas, ``train_mini``.
- :mod:`~inatcomp.build.splits`: the greedy observer split (:func:`~inatcomp.build.splits.assign_observers`).
- :mod:`~inatcomp.build.categories`: category ids in taxonomic order and their records.
- :mod:`~inatcomp.build.selection`: the chosen images in the release order, with what the files need from the export.
- :mod:`~inatcomp.build.layout`: file and folder names of a release and of its images.
- :mod:`~inatcomp.build.fetched`: with ``--photo-url``, the selected photos fetched, the selection run again
  without the gone ones; the ``--licenses`` filter.
- :mod:`~inatcomp.build.fetch`: the photo fetcher (urllib3, retries, ledger of gone photos, atomic cache writes).
- :mod:`~inatcomp.build.ledger`: the ledger of gone photos beside the cache (``--retry-failed`` empties it).
- :mod:`~inatcomp.build.progress`: progress of a long phase (a bar on a terminal, log lines otherwise).
- :mod:`~inatcomp.build.images`: the images resized into the release layout.
- :mod:`~inatcomp.build.json_text`: the dataset JSON files, joined from Arrow text columns.
- :mod:`~inatcomp.build.organizer`: solution, sample submission, provenance.
- :mod:`~inatcomp.build.audit`: what each rule removed, and leakage re-checked from the written files.
- :mod:`~inatcomp.build.stats`: statistics and the long-tail plot.
- :mod:`~inatcomp.build.minival`: ``inatcomp split-val``, a val file split into val and minival by observer.
- :mod:`~inatcomp.build.releases`: a release folder's files, found and checked (:func:`find_release`).
- :mod:`~inatcomp.build.arrays`: the NumPy and Arrow kernels the phases share (sorting and ranking in groups, joins).

Outputs, named as the releases (2018 shown; 2017 and 2021 use their own names):
``train2018.json``, ``val2018.json``, ``test2018.json`` (no annotations),
``{train,val,test}2018_locations.json``, ``categories.json``, ``solution.csv``,
``sample_submission.csv``, ``provenance.csv``, ``audit.json`` + ``audit.md``, ``stats.json`` +
``stats.md`` + ``long_tail.png``, and the images under ``train_val2018/`` and ``test2018/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inatcomp import lazy_exports

if TYPE_CHECKING:
    from inatcomp.build.audit import check_leakage
    from inatcomp.build.layout import release_names
    from inatcomp.build.minival import split_val
    from inatcomp.build.release import BuildResult, build_dataset
    from inatcomp.build.releases import Release, find_release
    from inatcomp.build.rules import BuildRules, PhotoChoice, Preset, rules_for
    from inatcomp.build.source import BUILD_COLUMNS
    from inatcomp.build.splits import assign_observers

__all__ = [
    "BUILD_COLUMNS",
    "BuildResult",
    "BuildRules",
    "PhotoChoice",
    "Preset",
    "Release",
    "assign_observers",
    "build_dataset",
    "check_leakage",
    "find_release",
    "release_names",
    "rules_for",
    "split_val",
]

#: Public names → their module, loaded on first use (PEP 562): the phases import pyarrow, pandas and Pillow,
#: which ``inatcomp.build.rules`` (the presets, read by the command line and the kernels) does not need.
_LAZY = {
    "BUILD_COLUMNS": "source",
    "BuildResult": "release",
    "BuildRules": "rules",
    "PhotoChoice": "rules",
    "Preset": "rules",
    "Release": "releases",
    "assign_observers": "splits",
    "build_dataset": "release",
    "check_leakage": "audit",
    "find_release": "releases",
    "release_names": "layout",
    "rules_for": "rules",
    "split_val": "minival",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
