"""The prediction engine: ``inatcomp predict``.

:func:`predict` loads a checkpoint's eval model (:func:`load_model`; τ-normalised, BatchNorm folded, in
channels-last), decodes each image once and cuts all its test-time views from that one decode
(:mod:`inatcomp.predict.tta`), and sends the views of a batch of images through the model together, the next batch
decoding meanwhile (:func:`prefetch`); the views' probabilities (or logits) are averaged. An unreadable image gets a
uniform row, is logged and counted in the header, and never stops the run. With a geo prior the rows are then
combined with it (:func:`inatcomp.predict.geocombine.apply_prior`).

The output is a prediction file (:mod:`inatcomp.formats.predictions`, ``data_schema/predictions.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from queue import Full, Queue
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from inatcomp.data.dataset import CompetitionDataset, create_loader
from inatcomp.data.feed import DistributedContext, device_batches
from inatcomp.data.gpudecode import BatchDecoder, DecodeMode, resolve_decode
from inatcomp.data.transforms import Interpolation
from inatcomp.formats.predictions import PredictionWriter
from inatcomp.models.checkpoints import head_options, load_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.freezing import fold_batchnorm
from inatcomp.options import AmpMode, enum_choice, resolve_device
from inatcomp.predict.geocombine import apply_prior
from inatcomp.predict.geodata import find_locations, load_locations
from inatcomp.predict.geoprior import load_prior
from inatcomp.predict.gpuviews import BytesDataset, bytes_collate, device_view_batches
from inatcomp.predict.sharded import (
    PartWriter,
    gather_outcomes,
    join_group,
    join_parts,
    part_path,
    shard_range,
)
from inatcomp.predict.taunorm import tau_normalise
from inatcomp.predict.tta import AverageMode, TTAMode, View, _average, _collate, _ViewDataset, load_views

__all__ = [
    "PREDICT_DEFAULTS",
    "PredictOptions",
    "center_crop_batches",
    "load_model",
    "predict",
    "prefetch",
]

_T = TypeVar("_T")
_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Feeding the model


class _InputBuffer:
    """Normalise batches of uint8 ``[N, s, s, 3]`` views into one reused ``[N, 3, s, s]`` tensor for the model.

    ``((x.float() - mean) / std)`` on a fresh channels-last batch costs several times what it should: three
    batch-sized tensors are allocated (160 views at 224 px: 96 MB each, page-faulted anew every batch), and the
    ``[1, 3, 1, 1]`` mean and std broadcast along the innermost, 3-long channel axis, which the element-wise
    kernels cannot vectorise. Here the views are converted into a kept buffer and normalised in place, in
    channels-last with the mean and std tiled along a whole image row (``[W × 3]``), a few dozen views at a time so
    that the float32 work stays in the CPU's cache: the same float32 operations, so the same numbers.

    With a ``dtype`` other than float32 (the autocast dtype), the float32 result is rounded into a buffer of
    that dtype. Autocast would round the float32 batch the same way at the model's first convolution, in a
    separate pass over the whole batch (about as slow as the old normalisation); here it is done in cache.

    Args:
        mean: ``[1, 3, 1, 1]`` channel means (on the 0-255 scale), on the model's device.
        std: ``[1, 3, 1, 1]`` channel standard deviations (0-255 scale).
        memory_format: The layout the model wants (``torch.channels_last`` or ``torch.contiguous_format``).
        dtype: The dtype handed to the model (``None``: float32).
        chunk_elements: Values normalised at a time on the CPU: 16 MB of float32, 27 views at 224 px, small
            enough to stay in cache, and few chunks per batch (on a busy machine every torch operation costs a
            synchronisation of the intra-op threads).
    """

    def __init__(
        self, mean: Any, std: Any, memory_format: Any, dtype: Any = None, *, chunk_elements: int = 1 << 22
    ) -> None:
        self.mean, self.std, self.memory_format = mean.float(), std.float(), memory_format
        self.dtype = dtype or torch.float32
        self.channels_last = memory_format == torch.channels_last
        # Chunks help the CPU's cache; a GPU gains nothing from them but more kernel launches.
        self.chunk_elements = chunk_elements if mean.device.type == "cpu" else None
        self.buffer: Any = None
        self.scratch: Any = None  # float32 working space when the buffer holds another dtype
        self.row_mean: Any = None
        self.row_std: Any = None

    def __call__(self, views: Any) -> Any:
        """The normalised ``[N, 3, s, s]`` batch: a view of the buffer, valid until the next call."""
        n, height, width, channels = views.shape
        step = max(1, self.chunk_elements // (height * width * channels)) if self.chunk_elements else n
        if self.buffer is None or len(self.buffer) < n or self.buffer.shape[1:] != (channels, height, width):
            device = self.mean.device
            shape = (n, channels, height, width)
            self.buffer = torch.empty(shape, dtype=self.dtype, device=device, memory_format=self.memory_format)
            if self.dtype != torch.float32:
                shape = (min(step, n), channels, height, width)
                self.scratch = torch.empty(shape, dtype=torch.float32, device=device, memory_format=self.memory_format)
            self.row_mean = self.mean.view(channels).repeat(width)
            self.row_std = self.std.view(channels).repeat(width)
        x = self.buffer[:n]  # a slice along N keeps the buffer's layout
        for start in range(0, n, step):
            part = views[start : start + step]
            k = len(part)
            work = x[start : start + k] if self.scratch is None else self.scratch[:k]
            if self.channels_last:
                pixels = work.permute(0, 2, 3, 1)  # [k, H, W, C] and contiguous: the buffer's memory order
                pixels.copy_(part)
                pixels.view(k * height, width * channels).sub_(self.row_mean).div_(self.row_std)
            else:
                work.copy_(part.permute(0, 3, 1, 2))
                work.sub_(self.mean).div_(self.std)
            if self.scratch is not None:
                x[start : start + k].copy_(work)
        return x


def prefetch(items: Iterable[_T], *, depth: int = 2) -> Iterator[_T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead.

    JPEG decoding, OpenCV and the model's kernels release the GIL, so the next batch decodes while the
    current one runs through the model: prediction costs about the larger of the two rather than their sum.
    An exception in the thread is raised here; leaving the loop early stops the thread.
    """
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        """Hand an entry over unless the consumer has left (then never block on a full queue)."""
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            put((False, error))

    thread = threading.Thread(target=produce, name="inatcomp-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = queue.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def load_model(checkpoint: str | os.PathLike, *, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """The eval-mode model of a checkpoint (file, stem or run folder) and its metadata."""
    state_dict, metadata, _ = load_checkpoint(checkpoint)
    for key in ("model", "num_classes", "category_ids"):
        if key not in metadata:
            raise ValueError(f"{checkpoint}: checkpoint metadata lacks {key!r}")
    model = create_model(metadata["model"], num_classes=int(metadata["num_classes"]), **head_options(metadata))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:  # torch's answer to missing, unexpected or misshapen tensors
        raise ValueError(
            f"{checkpoint}: its weights do not fit the model its metadata names, {metadata['model']} "
            f"({str(error).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), metadata


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The defaults of :func:`predict`, in one place: the library, ``inatcomp predict`` and the kernels read them.

    Attributes:
        tta: The views preset.
        average: How the views of an image are combined.
        batch_size: Images per batch (all their views go through the model together).
        workers: Loader processes decoding images; ``None``: none on the CPU (decoding runs in a prefetch thread
            beside the model, which needs the cores), up to 8 with CUDA.
        amp: Autocast dtype of the model.
        channels_last: Run the model in channels-last memory format.
        fold_bn: Fold each BatchNorm into the convolution before it.
        decode: Where JPEGs are decoded (``gpu``: nvJPEG, in batches; CPU decoding stays the default, as it
            decodes at reduced scale and needs no GPU memory).
    """

    tta: TTAMode = TTAMode.CENTER
    average: AverageMode = AverageMode.PROB
    batch_size: int = 64
    workers: int | None = None
    amp: AmpMode = AmpMode.OFF
    channels_last: bool = True
    fold_bn: bool = True
    decode: DecodeMode = DecodeMode.CPU


#: The one set of prediction defaults.
PREDICT_DEFAULTS = PredictOptions()


@dataclasses.dataclass(frozen=True)
class _Eval:
    """The eval-time model and what its checkpoint says about its input."""

    model: Any
    metadata: dict[str, Any]
    folded: int
    crop_size: int
    crop_pct: float
    interpolation: Any
    mean: Any
    std: Any
    category_ids: np.ndarray


def _load_eval_model(
    checkpoint: str | os.PathLike, *, device: Any, fold_bn: bool, channels_last: bool, tau_norm: float | None = None
) -> _Eval:
    """The checkpoint's model ready to predict (τ-normalised, BatchNorm folded, memory format set), data config."""
    model, metadata = load_model(checkpoint, device=device)
    if tau_norm:
        tau_normalise(model, tau_norm)
        _logger.info("τ-norm: classifier rows divided by their norm^%g", tau_norm)
    folded = 0
    if fold_bn:
        model, folded = fold_batchnorm(model)
        _logger.info("folded %d BatchNorm layer(s) into their convolutions", folded)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = metadata.get("data_config") or {}
    size = config.get("input_size", [3, 224, 224])
    return _Eval(
        model=model,
        metadata=metadata,
        folded=folded,
        crop_size=int(max(size[1], size[2])),
        crop_pct=float(config.get("crop_pct", 0.875)),
        interpolation=Interpolation(config.get("interpolation", "bicubic")),
        mean=torch.tensor(config.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1) * 255,
        std=torch.tensor(config.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1) * 255,
        category_ids=np.asarray(metadata["category_ids"], dtype=np.int64),
    )


def _view_loader(
    base: Any, ev: _Eval, *, tta: TTAMode, views: Sequence[View] | None, batch_size: int, workers: int, device: Any,
    rows: range | None = None,
) -> Any:  # fmt: skip
    """Batches of the views of every image (of ``rows`` only, when given), decoded once each (in ``workers``
    processes, or in this one); the batches' indices count from the first of ``rows``."""
    dataset = _ViewDataset(
        [base.path(i) for i in (rows if rows is not None else range(len(base)))],
        mode=tta,
        crop_size=ev.crop_size,
        crop_pct=ev.crop_pct,
        interpolation=ev.interpolation.cv2_flag,
        views=views,  # type: ignore[arg-type]
    )
    return create_loader(
        dataset=dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )


def _batches(base: Any, ev: _Eval, run: dict[str, Any], rows: range | None = None) -> tuple[Iterable[Any], bool]:
    """The batches of views to predict (of ``rows`` only, when given) and whether to prefetch them in a thread.

    ``run["decode"]`` is the resolved decoding: on the CPU the workers decode and cut the views; on the GPU they
    read bytes, and the views are cut on the device (:mod:`inatcomp.predict.gpuviews`).
    """
    rows = rows if rows is not None else range(len(base))
    if run.get("decode", DecodeMode.CPU) is DecodeMode.CPU:
        loader = _view_loader(base, ev, tta=run["tta"], views=run["views"], batch_size=run["batch_size"],
                              workers=run["workers"], device=run["device"], rows=rows)  # fmt: skip
        return loader, run["workers"] == 0
    paths = [base.path(i) for i in rows]
    files = create_loader(dataset=BytesDataset(paths), batch_size=run["batch_size"],  # type: ignore[arg-type]
                          num_workers=run["workers"], collate_fn=bytes_collate)  # fmt: skip
    batches = device_view_batches(
        prefetch(files) if run["workers"] == 0 else files, BatchDecoder(run["device"]), paths=paths, mode=run["tta"],
        crop_size=ev.crop_size, crop_pct=ev.crop_pct, views=run["views"], interpolation=ev.interpolation.value,
    )  # fmt: skip
    return batches, False


def center_crop_batches(
    checkpoint: str | os.PathLike, data: str | os.PathLike, images: str | os.PathLike | None = None, *,
    batch_size: int = 32,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The centre crops ``predict --tta center`` cuts for a checkpoint: uint8 ``[N, s, s, 3]`` batches, row indices.

    For running an exported model on the same inputs as the checkpoint (:mod:`inatcomp.predict.deploy`).
    """
    cpu = torch.device("cpu")
    ev = _load_eval_model(checkpoint, device=cpu, fold_bn=False, channels_last=False)
    base = CompetitionDataset(data, images, category_ids=ev.category_ids)
    loader = _view_loader(base, ev, tta=TTAMode.CENTER, views=None, batch_size=batch_size, workers=0, device=cpu)
    for views, _, index, _ in loader:
        yield views.numpy(), index.numpy()


def _predict_batches(
    loader: Any, ev: _Eval, writer: PredictionWriter, *, image_ids: np.ndarray, amp: AmpMode, average: AverageMode,
    device: Any, channels_last: bool, in_process: bool,
) -> tuple[list[int], int]:  # fmt: skip
    """Run every batch through the model and write its averaged rows; returns the failed image ids and views."""
    amp_dtype = {AmpMode.BF16: torch.bfloat16, AmpMode.FP16: torch.float16}.get(amp)
    # Under autocast the batch is handed over in the autocast dtype, rounded as autocast would round it.
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    normalise = _InputBuffer(ev.mean, ev.std, memory_format, amp_dtype)
    failed_ids: list[int] = []
    n_views = 0
    with torch.inference_mode():
        # In-process decoding (workers=0) still overlaps the model through a prefetch thread.
        # The views go to the device one batch ahead (on CUDA on a side stream); counts and indices stay here.
        batches = device_batches(prefetch(loader) if in_process else loader, device, leading=1)
        for batch_views, counts, index, failed in batches:
            logits = torch.empty((0, len(ev.category_ids)))
            if len(batch_views):
                x = normalise(batch_views)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = ev.model(x).float().cpu()
            writer.write(_average(logits, counts, average).numpy())
            n_views += len(batch_views)
            failed_ids += image_ids[index[failed.bool()].numpy()].tolist()
    return failed_ids, n_views


def predict(
    *,
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tta: TTAMode | str = PREDICT_DEFAULTS.tta,
    out: str | os.PathLike,
    views: Sequence[View] | str | os.PathLike | None = None,
    average: AverageMode | str = PREDICT_DEFAULTS.average,
    batch_size: int = PREDICT_DEFAULTS.batch_size,
    workers: int | None = PREDICT_DEFAULTS.workers,
    device: str | None = None,
    channels_last: bool = PREDICT_DEFAULTS.channels_last,
    amp: AmpMode | str | None = PREDICT_DEFAULTS.amp,
    fold_bn: bool = PREDICT_DEFAULTS.fold_bn,
    geo_prior: str | os.PathLike | None = None,
    locations: str | os.PathLike | None = None,
    tau_norm: float | None = None,
    decode: DecodeMode | str = PREDICT_DEFAULTS.decode,
) -> Path:
    """Predict every image of a competition JSON with test-time augmentation and write a prediction folder.

    Defaults are :data:`PREDICT_DEFAULTS` (:class:`PredictOptions` documents each).

    Args:
        checkpoint: A checkpoint file, stem or run folder (its ``best``).
        data: The competition JSON (test, or val for :func:`inatcomp.score.scoring.score_predictions`).
        images: Folder the ``file_name`` entries are relative to (``None``: the JSON's folder).
        tta: The views preset; :attr:`TTAMode.CUSTOM` with ``views``.
        out: The prediction folder to write.
        views: Custom views (a list, or a YAML/JSON file for :func:`~inatcomp.predict.tta.load_views`); implies
            custom mode.
        average: Average the views' probabilities or logits.
        batch_size: Images per batch (all their views go through the model together).
        workers: Loader processes decoding images (0: in this process; ``None``: see :class:`PredictOptions`).
        device: ``cpu``, ``cuda`` …; ``None`` picks CUDA when available.
        channels_last: Run the model in channels-last memory format.
        amp: ``bf16`` or ``fp16`` runs the model under ``torch.autocast`` (bf16 also on the CPU); ``None``/``off``
            in float32. Under autocast the normalised batch is handed to the model already rounded to that dtype
            (as autocast rounds it for the first convolution). Averaging is always in float32.
        fold_bn: Fold each BatchNorm into the convolution before it (:func:`inatcomp.models.freezing.fold_batchnorm`):
            the same scores up to rounding, faster forward passes.
        geo_prior: A saved geo prior (:mod:`~inatcomp.predict.geoprior`): the probabilities are multiplied by it
            and renormalised (:func:`inatcomp.predict.geocombine.apply_prior`; images without a place unchanged).
        locations: The images' places for ``geo_prior`` (default :func:`inatcomp.predict.geodata.find_locations`).
        tau_norm: ``P`` of Kang et al.'s τ-norm applied to the classifier first
            (:func:`inatcomp.predict.taunorm.tau_normalise`; ``None`` or 0: unchanged).
        decode: ``cpu``, or ``gpu``: nvJPEG and the views on the GPU (without it one warning, then ``cpu``).

    Under ``torchrun`` each rank predicts a share, rank 0 writes the folder (:mod:`inatcomp.predict.sharded`).

    Returns:
        The prediction folder.

    Raises:
        ValueError: Bad options, an unreadable checkpoint or JSON.
    """
    if views is not None:
        views = load_views(views) if isinstance(views, str | os.PathLike) else list(views)
        tta = TTAMode.CUSTOM
    tta, average = enum_choice(TTAMode, tta, option="tta"), enum_choice(AverageMode, average, option="average")
    amp = enum_choice(AmpMode, amp or AmpMode.OFF, option="amp")
    if tta is TTAMode.CUSTOM and not views:
        raise ValueError("TTA mode custom needs views (--views FILE)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    context, torch_device, owns_group = join_group(resolve_device(device))
    workers = (min(8, os.cpu_count() or 1) if torch_device.type == "cuda" else 0) if workers is None else workers
    geo = None
    if geo_prior is not None:  # loaded first: a bad prior or location file fails before the images are read
        geo = load_prior(geo_prior), load_locations(find_locations(data, locations))
    ev = _load_eval_model(checkpoint, device=torch_device, fold_bn=fold_bn, channels_last=channels_last,
                          tau_norm=tau_norm)  # fmt: skip
    base = CompetitionDataset(data, images, category_ids=ev.category_ids)
    decode = resolve_decode(decode, torch_device)
    header = {
        "created_by": "inatcomp predict", "checkpoint": str(checkpoint), "model": ev.metadata["model"],
        "data": str(data), "tta": tta.value, "views": [dataclasses.asdict(v) for v in views] if views else None,
        "average": average.value, "crop_size": ev.crop_size, "amp": amp.value, "folded_batchnorm": ev.folded,
        "tau_norm": float(tau_norm or 0.0), "world_size": context.world_size, "decode": decode.value,
    }  # fmt: skip
    run = dict(ev=ev, base=base, tta=tta, views=views, batch_size=batch_size, workers=workers, device=torch_device,
               amp=amp, average=average, channels_last=channels_last, decode=decode)  # fmt: skip
    start = time.perf_counter()
    try:
        if context.enabled:
            failed_ids, n_views = _predict_sharded(out, header, context, **run)
        else:
            failed_ids, n_views = _predict_whole(out, header, **run)
    finally:
        if owns_group:
            dist.destroy_process_group()
    if context.rank == 0:
        if failed_ids:
            _logger.warning("%d unreadable image(s) got a uniform prediction (listed in the header)", len(failed_ids))
        _logger.info("%s: %d images, %d views (%s), %.1f images/s", out, len(base), n_views, tta.value,
                     len(base) / max(time.perf_counter() - start, 1e-9))  # fmt: skip
        if geo is not None:
            apply_prior(out, prior=geo[0], locations=geo[1], out=out)
    return Path(out)


def _predict_whole(out: Any, header: dict[str, Any], *, ev: _Eval, base: Any, **run: Any) -> tuple[list[int], int]:
    """One process: every image's rows straight into the prediction folder; returns failed ids and views."""
    loader, in_process = _batches(base, ev, run)
    with PredictionWriter(out, image_ids=base.image_ids, category_ids=ev.category_ids, header=header) as writer:
        failed_ids, n_views = _predict_batches(
            loader, ev, writer, image_ids=base.image_ids, amp=run["amp"], average=run["average"],
            device=run["device"], channels_last=run["channels_last"], in_process=in_process,
        )  # fmt: skip
        writer.header.update(failed_images=len(failed_ids), failed_image_ids=failed_ids, views_total=n_views)
    return failed_ids, n_views


def _predict_sharded(
    out: Any, header: dict[str, Any], context: DistributedContext, *, ev: _Eval, base: Any, **run: Any
) -> tuple[list[int], int]:
    """One of ``context.world_size`` processes: this rank's share into its part file, then rank 0 joins the parts.

    Returns the failed ids and views of all ranks. Raises on every rank when any rank failed, naming it.
    """
    package_logger = logging.getLogger("inatcomp")
    if context.rank != 0:  # the other ranks log warnings only (an unreadable image in their share)
        package_logger.setLevel(max(package_logger.level, logging.WARNING))
    first, end = shard_range(len(base), context.rank, context.world_size)
    loader, in_process = _batches(base, ev, run, range(first, end))
    part = part_path(out, context.rank)
    outcome: dict[str, Any] = {"error": None}
    try:
        writer = PartWriter(part, rows=end - first, classes=len(ev.category_ids))
        try:
            failed_ids, n_views = _predict_batches(
                loader, ev, writer, image_ids=base.image_ids[first:end], amp=run["amp"], average=run["average"],
                device=run["device"], channels_last=run["channels_last"], in_process=in_process,
            )  # fmt: skip
        finally:
            writer.close()
        outcome.update(failed_ids=failed_ids, views=n_views)
    except Exception as error:  # noqa: BLE001 - every rank must hear of it, or the others wait for ever
        outcome.update(error=f"{type(error).__name__}: {error}", bad_input=isinstance(error, ValueError))
    try:
        outcomes = gather_outcomes(outcome)
        failed_ids = [i for o in outcomes for i in o["failed_ids"]]
        n_views = sum(o["views"] for o in outcomes)
        joined: dict[str, Any] = {"error": None}
        if context.rank == 0:
            try:
                header = {**header, "failed_images": len(failed_ids), "failed_image_ids": failed_ids,
                          "views_total": n_views}  # fmt: skip
                join_parts(out, world_size=context.world_size, image_ids=base.image_ids,
                           category_ids=ev.category_ids, header=header)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - told to the other ranks, which wait for the join
                joined.update(error=f"joining the parts: {type(error).__name__}: {error}",
                              bad_input=isinstance(error, ValueError))  # fmt: skip
        gather_outcomes(joined)  # every part is read before any is removed
    finally:
        part.unlink(missing_ok=True)
    return failed_ids, n_views
