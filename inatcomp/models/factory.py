"""timm models with a head over the competition's categories, checkpoints, head transfer and freezing.

A checkpoint is two files side by side: ``NAME.safetensors`` (tensors only, safe to load from strangers)
and ``NAME.json`` (model name, category ids in head order, data config, training config, metrics).
Training state for an exact resume (optimizer, scheduler, EMA, RNG states) is stored the same way:
tensors in safetensors, the rest in JSON. Nothing is ever unpickled.

Transfer between taxon sets (iNaturalist's own practice when its model moves to a new set of taxa, e.g.
55,000 → 60,000 in 2022): :func:`transfer_classifier` moves the classifier rows of the taxa both heads
share to their new positions, matched by taxon (:class:`TaxonMatch`: category id or name), never by index;
new taxa start at zero or at the mean row (:class:`NewTaxaInit`). :func:`freeze_model` freezes the
backbone or all but its last stages, BatchNorm statistics included.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import types
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from inatcomp.fileio import read_json, resolve_checkpoint, write_atomic
from inatcomp.models.heads import CovarianceModel, HeadType
from inatcomp.options import FreezeMode, PretrainedSource, parse_freeze, parse_pretrained

__all__ = [
    "FreezeMode",
    "FreezeReport",
    "NewTaxaInit",
    "TaxonMatch",
    "TransferReport",
    "choose_taxon_match",
    "classifier_names",
    "freeze_model",
    "freeze_norm_statistics",
    "fold_batchnorm",
    "parse_freeze",
    "taxon_keys",
    "transfer_classifier",
    "create_model",
    "head_metadata",
    "head_options",
    "save_checkpoint",
    "save_tensors",
    "load_checkpoint",
    "resolve_checkpoint",
    "flatten_state",
    "unflatten_state",
    "set_drop_rate",
    "SYNTH_MANIFEST",
    "SYNTH_WEIGHTS_ENV",
    "backbone_state",
    "file_sha256",
    "read_synth_manifest",
    "synth_weights_dir",
]

_logger = logging.getLogger(__name__)

#: The environment variable naming another folder of synthetic-world weights than the package's ``weights/``.
SYNTH_WEIGHTS_ENV = "INATCOMP_WEIGHTS_DIR"
#: The file beside the weights that names them, keyed by model name (see :mod:`inatcomp.train.pretrain`).
SYNTH_MANIFEST = "manifest.json"


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    drop_rate: float | None = None,
    channels_last: bool = False,
    head: HeadType | str = HeadType.AVG,
    head_dim: int | None = None,
    head_iterations: int | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """A timm model with a ``num_classes`` head: timm's own (average pooling) or iSQRT-COV.

    Args:
        name: Any timm architecture name.
        num_classes: Number of categories.
        pretrained: The backbone's weights (the head is always new, ``num_classes`` wide): a local weights
            file (``.safetensors`` or ``.pth`` from timm; nothing is downloaded); ``"timm"``, timm's published
            default weights for ``name`` (or its tag, ``NAME.TAG``); or ``"hf-hub:OWNER/NAME.TAG"``, that Hugging
            Face hub model, whose architecture must be ``name``'s. The last two go through timm and
            ``huggingface_hub``: downloaded when online, else read from the hub cache (``HF_HUB_OFFLINE=1``,
            ``HF_HOME`` / ``HF_HUB_CACHE``). ``"synth"``: the backbone ``inatcomp pretrain`` trained on a
            synthetic world for ``name``, from :func:`synth_weights_dir` (checked against its manifest's
            sha256). ``None`` or ``"none"``: from scratch.
        drop_rate: Dropout before the classifier, or ``None`` for the model's default.
        channels_last: Put the weights in channels-last memory format (faster convolutions).
        head: :attr:`HeadType.AVG` keeps timm's model as it is; :attr:`HeadType.ISQRTCOV` puts covariance
            pooling on a CNN's feature map (a :class:`~inatcomp.models.heads.CovarianceModel`, see
            :mod:`inatcomp.models.heads`).
        head_dim: iSQRT-COV channels after the 1×1 reduction (``None``: 256, a 32,896-dim vector).
        head_iterations: iSQRT-COV Newton–Schulz steps (``None``: 5).
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        ValueError: An unknown architecture or head, a missing weights file, hub weights neither online nor
            cached, a hub model of another architecture, synth weights missing for ``name`` or not matching
            their manifest's sha256, or head options without a head.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"--model {name}: not a timm architecture (see timm.list_models())")
    try:
        head = HeadType(head)
    except ValueError:
        raise ValueError(f"--head {head!r}: not one of {', '.join(h.value for h in HeadType)}") from None
    if head is HeadType.AVG and (head_dim is not None or head_iterations is not None):
        raise ValueError("head_dim and head_iterations are options of --head isqrtcov")
    if drop_rate is not None and head is HeadType.AVG:
        kwargs["drop_rate"] = drop_rate
    model = _create_timm_model(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    if head is HeadType.ISQRTCOV:
        model = CovarianceModel(
            model,
            num_classes=num_classes,
            dim=256 if head_dim is None else head_dim,
            iterations=5 if head_iterations is None else head_iterations,
            drop_rate=drop_rate or 0.0,
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _create_timm_model(
    name: str, *, num_classes: int, pretrained: str | os.PathLike | None, **kwargs: Any
) -> torch.nn.Module:
    """timm's model with the ``--pretrained`` weights of :func:`create_model` in its backbone."""
    if not pretrained:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    if isinstance(pretrained, os.PathLike):
        source, value = PretrainedSource.FILE, os.fspath(pretrained)
    else:
        source, value = parse_pretrained(pretrained)
    if source is PretrainedSource.NONE:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    if source is PretrainedSource.SYNTH:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
        _load_synth_backbone(model, name)
        return model
    # num_classes 0 in the weights' config makes timm drop their classifier (it never fits ours), so the head is
    # always new, even for a release with exactly ImageNet's 1,000 classes.
    if source is PretrainedSource.FILE:
        path = Path(value)
        if not path.is_file():
            raise ValueError(
                f"--pretrained {value}: no such weights file (the forms: FILE, timm for timm's published weights "
                f"of --model, hf-hub:OWNER/NAME.TAG for one Hugging Face hub model)"
            )
        overlay = {"file": str(path), "num_classes": 0}
        return timm.create_model(
            name, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    # Only the hub forms touch huggingface_hub, so only they import it.
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    repo = _published_weights(name) if source is PretrainedSource.TIMM else value
    timm_name = name if source is PretrainedSource.TIMM else f"{PretrainedSource.HF_HUB.value}:{value}"
    try:
        if source is PretrainedSource.HF_HUB:
            _check_hub_architecture(name, value)
        if not repo.startswith(("http://", "https://")):
            _require_safetensors(str(pretrained), repo)
        overlay = {"num_classes": 0}
        return timm.create_model(
            timm_name, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    except HFValidationError:
        raise ValueError(
            f"--pretrained {pretrained}: {repo!r} is not a hub model id (e.g. timm/resnet10t.tv_in1k)"
        ) from None
    # LocalEntryNotFoundError (no network or offline, not cached) is an OSError, as are the hub's HTTP errors.
    except (OSError, EntryNotFoundError) as error:
        raise ValueError(_unreachable_weights(str(pretrained), name=name, repo=repo, error=error)) from None


def synth_weights_dir() -> Path:
    """The folder of the synthetic-world weights: ``$INATCOMP_WEIGHTS_DIR``, else the package's ``weights/``."""
    return Path(os.environ.get(SYNTH_WEIGHTS_ENV) or Path(__file__).resolve().parent / "weights")


def read_synth_manifest(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of a weights folder (default :func:`synth_weights_dir`): model name → entry; ``{}`` if none.

    Raises:
        ValueError: An unreadable manifest, naming it.
    """
    path = Path(folder or synth_weights_dir()) / SYNTH_MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a manifest (expected a JSON object keyed by model name)")
    return manifest


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a timm model without its classifier(s) (:func:`classifier_names`), detached on the CPU."""
    prefixes = tuple(f"{name}." for name in classifier_names(model))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _load_synth_backbone(model: torch.nn.Module, name: str) -> None:
    """Load ``--pretrained synth``'s backbone for ``name`` into ``model`` (its classifier stays new).

    Raises:
        ValueError: No weights for ``name`` (naming those there are), a missing file, a sha256 other than the
            manifest's (naming the file and both), or tensors that do not fit the model.
    """
    folder = synth_weights_dir()
    manifest = read_synth_manifest(folder)
    if name not in manifest:
        available = ", ".join(sorted(manifest)) or "none yet (make pretrain writes them)"
        raise ValueError(f"--pretrained synth: no synthetic-world weights for --model {name} in {folder} "
                         f"(available: {available})")  # fmt: skip
    entry = manifest[name]
    path = folder / entry["file"]
    if not path.is_file():
        raise ValueError(f"--pretrained synth: {path} is missing (named by {folder / SYNTH_MANIFEST})")
    found = file_sha256(path)
    if found != entry["sha256"]:
        raise ValueError(f"--pretrained synth: {path} has sha256 {found}, but {folder / SYNTH_MANIFEST} records "
                         f"{entry['sha256']} (a changed or partial file: rerun make pretrain)")  # fmt: skip
    tensors = load_file(str(path))
    state = model.state_dict()
    expected = set(backbone_state(model))
    wrong = sorted(k for k in tensors if k not in expected or tensors[k].shape != state[k].shape)
    missing = sorted(expected - set(tensors))
    if wrong or missing:
        raise ValueError(f"--pretrained synth: {path} does not fit --model {name} "
                         f"({len(wrong)} unexpected or misshapen tensors, {len(missing)} missing)")  # fmt: skip
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=False)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update({k: tuple(entry[k]) for k in ("mean", "std") if k in entry})
    model.pretrained_cfg = cfg
    _logger.info("--pretrained synth: %s (sha256 %s…) in the backbone of %s", path, found[:12], name)


def _published_weights(name: str) -> str:
    """The hub repo (or, for a few old models, the URL) of timm's default weights for ``name`` (``NAME[.TAG]``).

    Raises:
        ValueError: timm publishes none for it.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # timm's answer to a tag the architecture does not have
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        architecture = timm.models.split_model_name_tag(name)[0]
        published = ", ".join(timm.list_pretrained(f"{architecture}.*")) or "none"
        raise ValueError(f"--pretrained timm: timm publishes no weights for --model {name} (published: {published})")
    return cfg.hf_hub_id or cfg.url


def _require_safetensors(spec: str, repo: str) -> None:
    """Fetch (or find in the cache) the hub model's ``model.safetensors`` before timm loads it.

    timm prefers that file and falls back to a pickled ``pytorch_model.bin``; fetching it first means timm always
    finds it, and a hub model without one is refused rather than unpickled (untrusted files never are here).

    Raises:
        ValueError: The hub model has no ``model.safetensors``.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        hf_hub_download(repo, "model.safetensors")
    except RemoteEntryNotFoundError:  # the hub has the model but not the file (not cached: an OSError, see above)
        raise ValueError(
            f"--pretrained {spec}: {repo} has no model.safetensors (pickled weights are never loaded here); "
            "convert its weights to safetensors and give --pretrained FILE"
        ) from None


def _check_hub_architecture(name: str, repo: str) -> None:
    """Read the hub model's ``config.json`` (small) before its weights, so a wrong one fails before downloading.

    Raises:
        ValueError: The hub model is another architecture than ``--model``, naming both.
    """
    _, architecture, _ = timm.models.load_model_config_from_hf(repo)
    wanted = timm.models.split_model_name_tag(name)[0]
    if architecture != wanted:
        raise ValueError(
            f"--pretrained hf-hub:{repo}: a {architecture} model, but --model is {name}; "
            f"give --model {architecture}, or hub weights of {wanted}"
        )


def _unreachable_weights(spec: str, *, name: str, repo: str, error: BaseException) -> str:
    """The one-line message for hub weights that are neither online nor in the cache: what was tried, what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if constants.is_offline_mode():
        hub = "the hub was not asked (HF_HUB_OFFLINE is set)"
    elif isinstance(error, HfHubHTTPError) and not isinstance(error, LocalEntryNotFoundError):
        hub = f"the hub answered {type(error).__name__}"
    else:
        hub = "the hub could not be reached"
    if repo.startswith(("http://", "https://")):
        # timm's few weights without a hub repo are fetched by torch.hub, into its own cache.
        cache = f"torch.hub's cache at {Path(torch.hub.get_dir()) / 'checkpoints'}"
    else:
        cache = f"the Hugging Face cache at {constants.HF_HUB_CACHE}"
    return (
        f"--pretrained {spec}: no weights for --model {name} ({repo}): {hub}, and {cache} does not hold them "
        f"(model.safetensors: pickled weights are never loaded); "
        f"give a local file (--pretrained FILE), or populate the cache (`hf download {repo}` where online, then "
        f"point HF_HOME or HF_HUB_CACHE at it with HF_HUB_OFFLINE=1) [{type(error).__name__}]"
    )


def head_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """The head of a model from :func:`create_model` as checkpoint metadata (``{"type": "avg"}`` for timm's)."""
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    if isinstance(module, CovarianceModel):
        return module.head_config
    return {"type": HeadType.AVG.value}


def head_options(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`create_model` keyword arguments that rebuild the head recorded in checkpoint metadata.

    Reads the ``head`` entry :func:`save_checkpoint` writes; checkpoints without one have timm's head.

    Raises:
        ValueError: An unknown head type.
    """
    head = metadata.get("head") or {"type": HeadType.AVG.value}
    if isinstance(head, str):
        head = {"type": head}
    try:
        head_type = HeadType(head.get("type", HeadType.AVG.value))
    except ValueError:
        raise ValueError(f"checkpoint head {head!r}: not one of {', '.join(h.value for h in HeadType)}") from None
    if head_type is HeadType.AVG:
        return {}
    return {"head": head_type, "head_dim": int(head["dim"]), "head_iterations": int(head["iterations"])}


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, numbers, strings) into tensors and a JSON skeleton.

    Each tensor is replaced in the skeleton by ``{"__tensor__": key}``; the keys index the returned dict.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, Mapping):
            return {
                "__dict__": [
                    [walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(value.items())
                ]
            }
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} at {path} in a checkpoint")

    return tensors, walk(state, prefix or "s")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    # safetensors refuses tensors that share memory; clone those few (e.g. tied weights).
    seen: set[int] = set()
    safe = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        safe[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    save_file(safe, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    *,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``PATH.safetensors`` (weights), ``PATH.json`` (metadata) and, for resuming, ``PATH.state.*``.

    Args:
        path: Checkpoint path without suffix (a ``.safetensors`` suffix is stripped).
        model: The model (its ``state_dict`` is saved; a DDP/compiled wrapper is unwrapped).
        metadata: JSON-serialisable facts: model name, category ids in head order, configs, metrics. A
            non-default head (iSQRT-COV) is added as ``head`` unless given (see :func:`head_options`).
        training_state: Optimizer, scheduler, EMA and RNG states for an exact resume.

    Returns:
        The weights file.
    """
    stem = Path(path)
    if stem.suffix == ".safetensors":
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    if isinstance(module, CovarianceModel) and "head" not in metadata:
        metadata = {**metadata, "head": head_metadata(module)}
    weights = stem.with_name(stem.name + ".safetensors")
    save_tensors(weights, {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    if training_state is not None:
        tensors, skeleton = flatten_state(training_state)
        save_tensors(stem.with_name(stem.name + ".state.safetensors"), tensors)
        write_atomic(stem.with_name(stem.name + ".state.json"), json.dumps(skeleton))
    # Metadata last: a checkpoint is complete when its JSON exists.
    write_atomic(stem.with_name(stem.name + ".json"), json.dumps(metadata, indent=2, sort_keys=True))
    return weights


def load_checkpoint(
    path: str | os.PathLike, *, with_training_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Load weights, metadata and (optionally) the training state of a checkpoint, a stem or a run folder.

    Returns:
        (state_dict, metadata, training_state or None).

    Raises:
        ValueError: Missing or unreadable files.
    """
    weights = resolve_checkpoint(path, prefer="last" if with_training_state else "best")
    try:
        state_dict = load_file(str(weights))
        metadata = read_json(weights.with_suffix(".json"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{weights}: unreadable checkpoint ({error})") from error
    training_state = None
    if with_training_state:
        state_file = weights.with_name(weights.stem + ".state.safetensors")
        skeleton_file = weights.with_name(weights.stem + ".state.json")
        if not (state_file.is_file() and skeleton_file.is_file()):
            raise ValueError(f"{weights}: no training state beside it (.state.safetensors/.state.json)")
        training_state = unflatten_state(read_json(skeleton_file), load_file(str(state_file)))
    return state_dict, metadata, training_state


# --- transfer between taxon sets -------------------------------------------------------------------------------


class TaxonMatch(enum.Enum):
    """How the taxa of two heads are matched.

    Competition category ids are positions (0..C-1 in each release), so they only match within one
    category set or where a producer made them taxon ids; names match across releases.
    """

    AUTO = "auto"  #: names when both sides have a unique name for every category, else category ids
    ID = "id"  #: category ids (taxon ids in iNaturalist's own training sets)
    NAME = "name"  #: the categories' ``name`` (the scientific name)


class NewTaxaInit(enum.Enum):
    """Start of the classifier rows of taxa the source head does not have."""

    ZERO = "zero"  #: weight and bias 0: a logit of 0 for every image
    MEAN = "mean"  #: the mean of all the source head's rows (weight and bias)


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_classifier` did.

    Attributes:
        match: How taxa were matched (``"id"`` or ``"name"``).
        init: How new rows started (``"zero"`` or ``"mean"``).
        carried: Taxa in both heads: their rows copied bit for bit to their new positions.
        added: Taxa only in the target head, in target head order.
        dropped: Taxa only in the source head, in source head order.
    """

    match: str
    init: str
    carried: int
    added: list[Hashable]
    dropped: list[Hashable]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts plus the added and dropped taxa."""
        return {
            "match": self.match,
            "init": self.init,
            "carried": self.carried,
            "added": len(self.added),
            "dropped": len(self.dropped),
            "added_taxa": list(self.added),
            "dropped_taxa": list(self.dropped),
        }


def classifier_names(model: torch.nn.Module) -> list[str]:
    """Module names of a timm model's classifier(s): ``fc``, ``head``, ``head.fc``, ``classifier`` …

    The module ``model.get_classifier()`` returns, plus any further ones ``pretrained_cfg['classifier']``
    declares (distilled models have two).

    Raises:
        ValueError: The model names no classifier with weights.
    """
    modules = dict(model.named_modules())
    names: list[str] = []
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names += [name for name, module in modules.items() if module is head and name]
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or []
    names += [declared] if isinstance(declared, str) else list(declared)
    names = [n for n in dict.fromkeys(names) if n in modules and any(True for _ in modules[n].parameters())]
    if not names:
        raise ValueError(f"{type(model).__name__}: no classifier found (get_classifier / pretrained_cfg['classifier'])")
    return names


def choose_taxon_match(*categories: Sequence[Mapping[str, Any]] | None) -> TaxonMatch:
    """Resolve :attr:`TaxonMatch.AUTO` for heads with these category records (one list per head).

    Names when every record of every head has a name and names are unique within each head, else ids.
    """
    for records in categories:
        if not records:
            return TaxonMatch.ID
        names = [r.get("name") for r in records]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            return TaxonMatch.ID
    return TaxonMatch.NAME


def taxon_keys(
    category_ids: Sequence[int],
    categories: Sequence[Mapping[str, Any]] | None,
    *,
    match: TaxonMatch,
) -> list[Hashable]:
    """The key of every class of a head, in head order: its category id or its name.

    Args:
        category_ids: Category ids in head order (checkpoint metadata ``category_ids``).
        categories: The category records in head order (metadata ``categories``), needed for names.
        match: :attr:`TaxonMatch.ID` or :attr:`TaxonMatch.NAME` (resolve ``AUTO`` with :func:`choose_taxon_match`).

    Raises:
        ValueError: Missing or duplicate keys, or records that do not line up with the ids.
    """
    if match is TaxonMatch.AUTO:
        raise ValueError("resolve TaxonMatch.AUTO with choose_taxon_match first")
    if match is TaxonMatch.ID:
        keys: list[Hashable] = [int(c) for c in category_ids]
    else:
        if categories is None or len(categories) != len(category_ids):
            raise ValueError("matching taxa by name needs a category record (with a name) for every class")
        keys = [r.get("name") for r in categories]
        missing = [int(c) for c, k in zip(category_ids, keys) if not isinstance(k, str) or not k]
        if missing:
            raise ValueError(f"matching taxa by name: categories without a name: {missing[:5]}")
    if len(set(keys)) != len(keys):
        seen: set[Hashable] = set()
        duplicates = [k for k in keys if k in seen or seen.add(k)]
        raise ValueError(f"matching taxa by {match.value}: duplicate keys {duplicates[:5]}")
    return keys


def transfer_classifier(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source_taxa: Sequence[Hashable],
    target_taxa: Sequence[Hashable],
    classifier: str | Sequence[str],
    init: NewTaxaInit = NewTaxaInit.ZERO,
    match: TaxonMatch | str = TaxonMatch.ID,
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Map a head over ``source_taxa`` to one over ``target_taxa``, row by taxon.

    Every tensor under a classifier module whose first dimension is the source head size (the weight,
    the bias; a 1×1 convolution's kernel too) gets one row per target taxon: the source row of the same
    taxon, copied bit for bit, or for a new taxon zeros or the mean of all source rows. Every other
    tensor is passed on unchanged.

    Args:
        state_dict: The source model's weights.
        source_taxa: Key of each source class in head order (see :func:`taxon_keys`).
        target_taxa: Key of each target class in head order.
        classifier: The classifier module name(s) (see :func:`classifier_names`).
        init: Start of the rows of new taxa.
        match: How the keys were made, recorded in the report.

    Returns:
        The new state dict and a :class:`TransferReport`.

    Raises:
        ValueError: Duplicate keys, no classifier tensor in the state, or one of another head size.
    """
    source_taxa, target_taxa = list(source_taxa), list(target_taxa)
    for side, keys in (("source", source_taxa), ("target", target_taxa)):
        if len(set(keys)) != len(keys):
            raise ValueError(f"{side}_taxa has duplicate keys")
    prefixes = [classifier] if isinstance(classifier, str) else list(classifier)
    position = {key: i for i, key in enumerate(source_taxa)}
    src = [position.get(key, -1) for key in target_taxa]
    carried_to = torch.tensor([i for i, s in enumerate(src) if s >= 0], dtype=torch.long)
    carried_from = torch.tensor([s for s in src if s >= 0], dtype=torch.long)
    new_rows = torch.tensor([i for i, s in enumerate(src) if s < 0], dtype=torch.long)
    out = dict(state_dict)
    mapped = []
    for key, tensor in state_dict.items():
        if not any(key.startswith(prefix + ".") for prefix in prefixes):
            continue
        if tensor.ndim == 0 or tensor.shape[0] != len(source_taxa):
            raise ValueError(
                f"{key}: shape {tuple(tensor.shape)} does not fit a head of {len(source_taxa)} source taxa"
            )
        rows = tensor.new_zeros((len(target_taxa), *tensor.shape[1:]))
        rows[carried_to] = tensor[carried_from]
        if init is NewTaxaInit.MEAN and len(new_rows):
            rows[new_rows] = tensor.double().mean(dim=0).to(tensor.dtype)
        out[key] = rows
        mapped.append(key)
    if not mapped:
        raise ValueError(f"no classifier tensor under {prefixes} in the state dict")
    target_set = set(target_taxa)
    report = TransferReport(
        match=TaxonMatch(match).value,
        init=init.value,
        carried=len(carried_to),
        added=[key for key, s in zip(target_taxa, src) if s < 0],
        dropped=[key for key in source_taxa if key not in target_set],
    )
    return out, report


# --- freezing ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FreezeReport:
    """What :func:`freeze_model` froze.

    Attributes:
        mode: The freeze mode.
        keep_last: N of ``all-but-last-N`` (0 otherwise).
        trainable_parameters: Number of parameter elements still trained.
        frozen_parameters: Number of parameter elements frozen.
        frozen_norms: Normalisation layers whose running statistics are frozen (kept in eval mode).
        trainable_modules: The top-most trainable module names (``[""]``: the whole model).
    """

    mode: FreezeMode
    keep_last: int
    trainable_parameters: int
    frozen_parameters: int
    frozen_norms: int
    trainable_modules: list[str]


def _stay_in_eval(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``train()`` of a frozen normalisation layer: it stays in eval mode, so its statistics stay fixed."""
    return torch.nn.Module.train(self, False)


def _has_running_stats(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "track_running_stats", False)) and getattr(module, "running_mean", None) is not None


def _fix_statistics(module: torch.nn.Module) -> None:
    """Put a normalisation layer in eval mode for good: ``train()`` leaves it there."""
    module.train = types.MethodType(_stay_in_eval, module)
    module.eval()


def freeze_norm_statistics(model: torch.nn.Module) -> int:
    """Keep every BatchNorm layer's running statistics fixed (eval mode, also after ``model.train()``).

    Their weights still train. For fine-tuning on a few hundred images (val fine-tuning): otherwise a few
    dozen steps replace statistics gathered over the whole train set by those of the small set's batches.

    Returns:
        The number of layers whose statistics are now fixed.
    """
    count = 0
    for module in model.modules():
        if _has_running_stats(module):
            _fix_statistics(module)
            count += 1
    return count


def fold_batchnorm(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """An inference copy of an eval-mode model with each BatchNorm folded into the convolution before it.

    The folded convolution computes ``bn(conv(x))`` in one pass (weights scaled by ``γ/√(σ²+ε)``, the bias
    shifted), which saves a pass over every activation map: 1.26–1.34× faster forward passes of resnet10t at
    224 px under bf16 on this project's CPU, the same outputs up to float rounding. Only plain
    ``Conv→BatchNorm`` pairs whose convolution feeds nothing else are folded (PyTorch's ``torch.fx`` fusion:
    ResNets, SE-ResNeXts); timm's fused ``BatchNormAct2d`` (EfficientNet, MobileNet, Inception) is not, and a
    model that ``torch.fx`` cannot trace is returned unchanged.

    Returns:
        The model to run (a copy when something was folded; the given model otherwise) and the number of
        BatchNorm layers folded.

    Raises:
        ValueError: The model is in training mode (its BatchNorm layers would use batch statistics).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    import torch.fx
    from torch.fx.experimental.optimization import fuse

    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 (any tracing failure: the unfolded model is always right)
        _logger.debug("BatchNorm not folded: torch.fx cannot trace %s (%s)", type(model).__name__, error)
        return model, 0
    folded = fuse(traced, no_trace=True)

    def batchnorm_calls(graph_module: torch.fx.GraphModule) -> int:
        # Layers run as modules: a subclass that tracing inlined (timm's BatchNormAct2d) is not one of them.
        modules = dict(graph_module.named_modules())
        return sum(
            node.op == "call_module" and isinstance(modules[node.target], torch.nn.modules.batchnorm._BatchNorm)
            for node in graph_module.graph.nodes
        )

    count = batchnorm_calls(traced) - batchnorm_calls(folded)
    return (folded.eval(), count) if count else (model, 0)


def freeze_model(model: torch.nn.Module, *, mode: FreezeMode, keep_last: int = 1) -> FreezeReport:
    """Freeze parts of a timm model in place.

    Frozen parameters get ``requires_grad=False`` (leave them out of the optimizer: ``filter`` on
    ``requires_grad``); frozen BatchNorm layers (any layer with running statistics) go to eval mode and stay
    there when ``model.train()`` is called again, so their running mean and variance do not move either.

    Args:
        model: A timm model (``get_classifier()``; ``feature_info`` for ``ALL_BUT_LAST``).
        mode: ``NONE`` does nothing; ``BACKBONE`` trains only the classifier; ``ALL_BUT_LAST`` trains the
            last ``keep_last`` stages of ``model.feature_info`` (ResNet layers, ConvNeXt/EfficientNet stages,
            ViT blocks) and every module registered after the first of them (final norm, head).
        keep_last: N of ``ALL_BUT_LAST``, 1 ≤ N ≤ the number of stages.

    Raises:
        ValueError: No classifier, no ``feature_info``, or N out of range.
    """
    named = list(model.named_modules())
    classifiers = classifier_names(model)
    if mode is FreezeMode.NONE:
        trainable = [""]
    elif mode is FreezeMode.BACKBONE:
        trainable = classifiers
    else:
        stages = [info["module"] for info in getattr(model, "feature_info", None) or []]
        if not stages:
            raise ValueError(f"{type(model).__name__}: no feature_info stages, so all-but-last-N is undefined")
        if not 1 <= keep_last <= len(stages):
            raise ValueError(f"all-but-last-{keep_last}: this model has {len(stages)} stages ({', '.join(stages)})")
        names = [name for name, _ in named]
        first = stages[-keep_last]
        if first not in names:
            raise ValueError(f"feature_info names {first!r}, which is not a module of the model")
        # The top-most modules from the first kept stage on (named_modules lists a module before its children).
        trainable = []
        for name in names[names.index(first) :]:
            if not any(name == t or name.startswith(t + ".") for t in trainable):
                trainable.append(name)
        trainable += [c for c in classifiers if not any(c == t or c.startswith(t + ".") for t in trainable)]

    def is_trainable(name: str) -> bool:
        return any(t == "" or name == t or name.startswith(t + ".") for t in trainable)

    counts = {True: 0, False: 0}
    frozen_norms = 0
    for name, module in named:
        keep = is_trainable(name)
        for parameter in module.parameters(recurse=False):
            if not keep:
                parameter.requires_grad_(False)
            counts[parameter.requires_grad] += parameter.numel()
        if not keep and _has_running_stats(module):
            _fix_statistics(module)
            frozen_norms += 1
    report = FreezeReport(
        mode=mode,
        keep_last=keep_last if mode is FreezeMode.ALL_BUT_LAST else 0,
        trainable_parameters=counts[True],
        frozen_parameters=counts[False],
        frozen_norms=frozen_norms,
        trainable_modules=trainable,
    )
    _logger.debug("freeze %s: %s", mode.value, report)
    return report


def set_drop_rate(model: torch.nn.Module, rate: float) -> None:
    """Set the dropout before the classifier (per stage of progressive learning).

    timm models keep it as ``drop_rate`` (applied functionally in ``forward_head``) or as an ``nn.Dropout`` in
    their head; the covariance head has ``head.drop``. Dropout elsewhere (attention, MLP blocks) is left alone.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"drop_rate must be in [0, 1), got {rate}")
    if hasattr(model, "drop_rate"):
        model.drop_rate = rate
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and (name in ("drop", "head_drop") or name.startswith("head.")):
            module.p = rate
