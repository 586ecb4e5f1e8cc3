"""Training: ``inatcomp train`` (the epoch loop and its recipes) and ``inatcomp pretrain`` (synthetic-world backbones).

The package's modules are the run's phases: :mod:`~inatcomp.train.config` (options, checked without torch),
:mod:`~inatcomp.train.distributed` (torchrun), :mod:`~inatcomp.train.recipes` (init, transfer, freezing),
:mod:`~inatcomp.train.parts` (datasets, model, sampler, loss, optimizer), :mod:`~inatcomp.train.engine`
(one epoch, evaluation), :mod:`~inatcomp.train.checkpointing` (run folder, exact resume) and
:mod:`~inatcomp.train.loop` (the epochs); :mod:`~inatcomp.train.runs` (:func:`train_run`, a run on a release) and
:mod:`~inatcomp.train.pretrain` (``inatcomp pretrain``) build on them. It may import :mod:`inatcomp.formats`,
:mod:`inatcomp.data`, :mod:`inatcomp.models`, :mod:`inatcomp.build` (a release to train on), :mod:`inatcomp.world`
(the pretraining world), :mod:`inatcomp.fileio` and :mod:`inatcomp.options`; never ``pipeline``, ``cli`` or
``demo``. Importing the package imports only the config: the names from the torch-using modules load on first
use (PEP 562), so ``from inatcomp.train import TrainConfig`` stays free of torch.

One run folder holds everything: ``config.yaml`` (the resolved configuration), ``metrics.csv`` and
``metrics.json`` (per epoch: losses, val top-1/top-3 error, images/s, distinct bad images and failed reads,
learning rate), ``best.*`` and ``last.*`` checkpoints (safetensors plus JSON metadata, see
:mod:`inatcomp.models.checkpoints`) and ``last.state.*`` (optimizer, EMA, sampler and RNG states) from which
``--resume`` continues exactly.

Configuration precedence lives in :func:`resolve_config`: command line over ``-c config.yaml`` over the
defaults of :class:`TrainConfig`.

Recipes on top of the loop (configs in ``kernels/configs/``):

* ``--init CHECKPOINT`` starts from a checkpoint. With the same categories every weight is loaded; with
  another category set (a new taxon set) the classifier rows of the taxa both share are moved to their new
  positions, matched by ``--transfer-match`` (names across releases, or ids), new taxa start at
  ``--new-taxa-init`` (zero or the mean row); everything else is loaded. The counts of taxa carried, added
  and dropped are logged, in every metrics row and in the checkpoints' ``transfer`` metadata.
* ``--freeze none|backbone|all-but-last-N`` trains only the classifier, or the last N stages and what
  follows them; frozen BatchNorm layers keep their statistics (see :func:`inatcomp.models.freezing.freeze_model`).
* ``--categories-from init|CHECKPOINT|JSON`` takes the head's categories (and their order) from elsewhere
  than the training JSON: val fine-tuning trains on a val file under the train file's category set.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins the process group (gloo on the CPU, NCCL
  on CUDA, one GPU per ``LOCAL_RANK``), the model is wrapped in DistributedDataParallel, the sampler shards
  each epoch's global order and the val set is sharded, losses and error counts are summed over the ranks,
  and only rank 0 logs progress and writes files. ``batch_size`` is per process: the global batch is
  ``batch_size × WORLD_SIZE`` (scale ``lr`` yourself). Each sample's augmentation is seeded by its draw
  (seed, epoch, place in the epoch's global order) and the global random generators by (seed, epoch,
  rank) at the start of each epoch, so a run on W ranks with batch B takes the same steps over the same
  augmented images as one process with batch W·B, and a resumed run continues exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inatcomp import lazy_exports
from inatcomp.options import AmpMode
from inatcomp.train.config import (
    STAGE_KEYS,
    HeadOption,
    LossOption,
    NewTaxaInitOption,
    OptimizerType,
    SamplerOption,
    ScheduleType,
    Stage,
    TrainConfig,
    TransferMatchOption,
    load_config_file,
    progressive_stages,
    resolve_config,
    stage_at,
)

if TYPE_CHECKING:
    from inatcomp.train.distributed import DistributedContext, distributed_context, init_distributed
    from inatcomp.train.ema import ModelEma
    from inatcomp.train.engine import evaluate, train_one_epoch
    from inatcomp.train.loop import TrainResult, train
    from inatcomp.train.optim import lr_at
    from inatcomp.train.runs import train_run

__all__ = [
    "AmpMode",
    "OptimizerType",
    "ScheduleType",
    "SamplerOption",
    "LossOption",
    "HeadOption",
    "TransferMatchOption",
    "NewTaxaInitOption",
    "TrainConfig",
    "TrainResult",
    "ModelEma",
    "DistributedContext",
    "distributed_context",
    "init_distributed",
    "load_config_file",
    "resolve_config",
    "lr_at",
    "train",
    "train_run",
    "train_one_epoch",
    "evaluate",
    "Stage",
    "STAGE_KEYS",
    "progressive_stages",
    "stage_at",
]

#: Public names of the torch-using modules, loaded on first use (PEP 562).
_LAZY = {
    "TrainResult": "loop",
    "train": "loop",
    "ModelEma": "ema",
    "DistributedContext": "distributed",
    "distributed_context": "distributed",
    "init_distributed": "distributed",
    "lr_at": "optim",
    "train_run": "runs",
    "train_one_epoch": "engine",
    "evaluate": "engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
