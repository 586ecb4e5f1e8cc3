"""The competitor's side after training: predictions, their combinations, and submissions.

It holds test-time augmentation (:mod:`~inatcomp.predict.tta`: the views of an image and their average), the
prediction engine (:mod:`~inatcomp.predict.engine`: ``inatcomp predict``, model loading, the loop), ensembles of
prediction files (:mod:`~inatcomp.predict.ensemble`), post-hoc logit adjustment (:mod:`~inatcomp.predict.longtail`)
and τ-normalised classifiers (:mod:`~inatcomp.predict.taunorm`), the geo prior (its places and dates in
:mod:`~inatcomp.predict.geodata`, its model in :mod:`~inatcomp.predict.geoprior`, its combination with predictions in
:mod:`~inatcomp.predict.geocombine`, its map in :mod:`~inatcomp.predict.geomap`), Kaggle submissions
(:mod:`~inatcomp.predict.submission`) and export for deployment (:mod:`~inatcomp.predict.deploy`). It may import
:mod:`inatcomp.formats`, :mod:`inatcomp.data`, :mod:`inatcomp.models`, :mod:`inatcomp.score`, :mod:`inatcomp.fileio`
and :mod:`inatcomp.options`. The file commands (``ensemble``, ``submit``, ``score-pred``) use only the torch-free
modules ``ensemble``, ``longtail`` and ``submission``, so the names below load on first use (PEP 562): importing
the package imports nothing else. The function ``ensemble`` is :func:`inatcomp.predict.ensemble.ensemble` (the
package's attribute ``ensemble`` is that module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inatcomp import lazy_exports

if TYPE_CHECKING:
    from inatcomp.predict.deploy import ExportFormat, ExportReport, export_model
    from inatcomp.predict.engine import PREDICT_DEFAULTS, PredictOptions, center_crop_batches, load_model, predict
    from inatcomp.predict.ensemble import EnsembleMode, FitResult, combine, fit_weights
    from inatcomp.predict.geocombine import apply_prior, evaluate_prior
    from inatcomp.predict.geodata import Locations, Observations, find_locations, load_locations, load_observations
    from inatcomp.predict.geomap import plot_prior_map
    from inatcomp.predict.geoprior import GeoPrior, GeoPriorNet, PriorConfig, load_prior, save_prior, train_prior
    from inatcomp.predict.longtail import (
        ClassPrior,
        TargetPrior,
        adjust_predictions,
        adjust_scores,
        class_prior,
        fit_tau,
        tau_towards,
    )
    from inatcomp.predict.submission import validate_submission, write_submission
    from inatcomp.predict.taunorm import tau_normalise
    from inatcomp.predict.tta import AverageMode, TTAMode, View, view_boxes

__all__ = [
    "PREDICT_DEFAULTS",
    "AverageMode",
    "ClassPrior",
    "EnsembleMode",
    "ExportFormat",
    "ExportReport",
    "FitResult",
    "GeoPrior",
    "GeoPriorNet",
    "Locations",
    "Observations",
    "PredictOptions",
    "PriorConfig",
    "TTAMode",
    "TargetPrior",
    "View",
    "adjust_predictions",
    "adjust_scores",
    "apply_prior",
    "center_crop_batches",
    "class_prior",
    "combine",
    "evaluate_prior",
    "export_model",
    "find_locations",
    "fit_tau",
    "fit_weights",
    "load_locations",
    "load_model",
    "load_observations",
    "load_prior",
    "plot_prior_map",
    "predict",
    "save_prior",
    "tau_normalise",
    "tau_towards",
    "train_prior",
    "validate_submission",
    "view_boxes",
    "write_submission",
]

#: Public name → the module of this package that defines it, imported on first use.
_LAZY = {
    "AverageMode": "tta",
    "TTAMode": "tta",
    "View": "tta",
    "view_boxes": "tta",
    "PREDICT_DEFAULTS": "engine",
    "PredictOptions": "engine",
    "center_crop_batches": "engine",
    "load_model": "engine",
    "predict": "engine",
    "EnsembleMode": "ensemble",
    "FitResult": "ensemble",
    "combine": "ensemble",
    "fit_weights": "ensemble",
    "ClassPrior": "longtail",
    "TargetPrior": "longtail",
    "adjust_predictions": "longtail",
    "adjust_scores": "longtail",
    "class_prior": "longtail",
    "fit_tau": "longtail",
    "tau_towards": "longtail",
    "tau_normalise": "taunorm",
    "Locations": "geodata",
    "Observations": "geodata",
    "find_locations": "geodata",
    "load_locations": "geodata",
    "load_observations": "geodata",
    "GeoPrior": "geoprior",
    "GeoPriorNet": "geoprior",
    "PriorConfig": "geoprior",
    "load_prior": "geoprior",
    "save_prior": "geoprior",
    "train_prior": "geoprior",
    "apply_prior": "geocombine",
    "evaluate_prior": "geocombine",
    "plot_prior_map": "geomap",
    "validate_submission": "submission",
    "write_submission": "submission",
    "ExportFormat": "deploy",
    "ExportReport": "deploy",
    "export_model": "deploy",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
