"""The backbone's starting weights (``--pretrained``): a local file, timm's or a hub model's, or the synthetic world's.

:func:`create_timm_model` builds timm's model with those weights in its backbone (the classifier is always new).
Hub weights go through timm and ``huggingface_hub``, downloaded when online, else read from the hub cache; only
``model.safetensors`` is ever loaded (pickled weights never are). The synthetic-world weights ``inatcomp
pretrain`` writes (:mod:`inatcomp.train.pretrain`) lie in :func:`synth_weights_dir` beside a manifest
(:data:`SYNTH_MANIFEST`) that names each model's file and its sha256, checked before loading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
)
from safetensors import SafetensorError

from inatcomp.fileio import read_json
from inatcomp.models.checkpoints import file_sha256, load_tensors
from inatcomp.models.transfer import classifier_names
from inatcomp.options import PretrainedSource, parse_pretrained

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "SYNTH_MANIFEST",
    "SYNTH_WEIGHTS_ENV",
    "backbone_state",
    "create_timm_model",
    "read_synth_manifest",
    "synth_weights_dir",
]

_logger = logging.getLogger(__name__)

#: The environment variable naming another folder of synthetic-world weights than the package's ``weights/``.
SYNTH_WEIGHTS_ENV = "INATCOMP_WEIGHTS_DIR"
#: Seconds the hub's host has to accept a connection before ``--pretrained timm|hf-hub:`` reads only the cache (as
#: with ``HF_HUB_OFFLINE=1``): a machine without network answers in seconds, not after the hub client's retries
#: (half a minute and more); a reachable host answers in well under a second.
HUB_PROBE_TIMEOUT_S = 3.0
#: The file beside the weights that names them, keyed by model name (see :mod:`inatcomp.train.pretrain`).
SYNTH_MANIFEST = "manifest.json"


def create_timm_model(
    name: str, *, num_classes: int, pretrained: str | os.PathLike | None, **kwargs: Any
) -> torch.nn.Module:
    """timm's model with the ``--pretrained`` weights of :func:`~inatcomp.models.factory.create_model` in its
    backbone (the forms and errors are described there)."""
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
        return _create_from_file(name, path, num_classes=num_classes, **kwargs)
    return _create_from_hub(name, str(pretrained), source, value, num_classes=num_classes, **kwargs)


def _create_from_hub(
    name: str, spec: str, source: PretrainedSource, value: str, *, num_classes: int, **kwargs: Any
) -> torch.nn.Module:
    """timm's model with timm's published weights (``--pretrained timm``) or a hub model's (``hf-hub:…``).

    The hub's host is asked once for a connection (:data:`HUB_PROBE_TIMEOUT_S`); unreachable, only the cache is
    read, as with ``HF_HUB_OFFLINE=1``, so an offline machine answers in seconds, not after the hub client's
    retries.

    Raises:
        ValueError: The weights are neither reachable nor cached, or not a hub model id (see
            :func:`~inatcomp.models.factory.create_model`).
    """
    repo = _published_weights(name) if source is PretrainedSource.TIMM else value
    timm_name = name if source is PretrainedSource.TIMM else f"{PretrainedSource.HF_HUB.value}:{value}"
    by_url = repo.startswith(("http://", "https://"))
    unreachable = None if constants.is_offline_mode() else _unreachable_host(repo if by_url else constants.ENDPOINT)
    try:
        if unreachable and by_url and not _torch_hub_file(repo).is_file():  # torch.hub would wait on the network
            raise ConnectionError(unreachable)
        with _hub_offline(bool(unreachable)):
            if source is PretrainedSource.HF_HUB:
                _check_hub_architecture(name, value)
            if not by_url:
                _require_safetensors(spec, repo)
            overlay = {"num_classes": 0}
            return timm.create_model(
                timm_name, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
    except HFValidationError:
        raise ValueError(f"--pretrained {spec}: {repo!r} is not a hub model id (e.g. timm/resnet10t.tv_in1k)") from None
    # LocalEntryNotFoundError (no network or offline, not cached) is an OSError, as are the hub's HTTP errors.
    except (OSError, EntryNotFoundError) as error:
        message = _unreachable_weights(spec, name=name, repo=repo, error=error, unreachable=unreachable)
        raise ValueError(message) from None


def _unreachable_host(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``url``'s host accepts a TCP connection within ``timeout`` seconds, else what happened.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is waited on for
    ``timeout`` at most. Behind a proxy (``HTTPS_PROXY``) the host is not asked: the hub client's own timeouts apply.
    """
    parts = urllib.parse.urlsplit(url)
    if urllib.request.getproxies().get(parts.scheme) or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error.strerror or str(error) or type(error).__name__)

    thread = threading.Thread(target=connect, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return None
    why = outcome[0] if outcome else "no answer"
    return f"{host}:{port} could not be reached within {timeout:g} s ({why})"


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (cache only) inside the block when ``offline``; its own setting after.

    huggingface_hub reads ``constants.HF_HUB_OFFLINE`` at each download, as ``HF_HUB_OFFLINE=1`` sets it at import.
    """
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _torch_hub_file(url: str) -> Path:
    """Where torch.hub caches a file downloaded from ``url`` (timm's few weights without a hub repo)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)


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
    tensors = load_tensors(path)
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


def _create_from_file(name: str, path: Path, *, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    """timm's model with the backbone of a local weights file (``--pretrained FILE``).

    Raises:
        ValueError: A truncated or corrupt file, or weights of another architecture, in one line naming the file.
    """
    overlay = {"file": str(path), "num_classes": 0}
    try:
        return timm.create_model(
            name, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    except SafetensorError as error:  # timm reads the file with safetensors' load_file: say which file is damaged
        reason = str(error).removeprefix("Error while deserializing header: ")
        raise ValueError(f"--pretrained {path}: not a whole safetensors file ({reason}; {path.stat().st_size:,} "
                         "bytes): truncated or corrupt, copy or write it again") from None  # fmt: skip
    except RuntimeError as error:
        if "loading state_dict" not in str(error):  # torch's words for tensors that do not fit the model
            raise
        first = str(error).splitlines()[0]
        raise ValueError(f"--pretrained {path}: its tensors do not fit --model {name} ({first})") from None


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


def _unreachable_weights(spec: str, *, name: str, repo: str, error: BaseException, unreachable: str | None) -> str:
    """The one-line message for hub weights that are neither online nor in the cache: what was tried, what to do.

    ``unreachable``: what the connection attempt of :func:`_unreachable_host` found, when it found no host.
    """
    if unreachable:
        hub = f"the hub was not asked, as {unreachable}"
    elif constants.is_offline_mode():
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
