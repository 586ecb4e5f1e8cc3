"""Export a checkpoint's eval model for deployment: ONNX or TorchScript, optionally int8.

The exported graph takes what ``predict`` decodes, an RGB batch ``float32 [N, 3, s, s]`` on the 0-255 scale (``s``
the checkpoint's crop size), and does the checkpoint's normalisation itself, so a deployment only resizes and
centre-crops (``crop_pct`` of the metadata) and hands the pixels over. It returns the logits ``[N, C]`` in the
order of ``category_ids``. Beside ``FILE`` a ``FILE.json`` (the whole name plus ``.json``: ``model.onnx.json``)
records the categories, the input, the opset, the check below and, with ``--int8``, the accuracy change.

Every export is checked in the command itself: the exported model runs (ONNX Runtime, or ``torch.jit.load``) on a
batch of centre crops of ``--val`` (random pixels without one) and its logits must equal PyTorch's within
:data:`TOLERANCE`; otherwise the command fails and the file is not left behind.

ONNX: opset :data:`OPSET` (ONNX Runtime 1.17 and later run it), exported with the TorchScript-based exporter
(``dynamo=False``: no ``onnxscript`` needed), the batch axis dynamic. ``--int8``: ONNX Runtime's dynamic
quantisation (int8 weights of the convolutions and the classifier, activations quantised per batch at run time);
with ``--val`` the top-1 error of the float and the int8 model on its centre crops is measured and recorded, as
iNaturalist reports for its compressed on-device models.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from inatcomp.data.dataset import CompetitionDataset
from inatcomp.fileio import write_atomic
from inatcomp.formats.predictions import index_of, load_labels
from inatcomp.predict.engine import center_crop_batches, load_model

__all__ = ["OPSET", "TOLERANCE", "ExportFormat", "ExportReport", "export_model"]

_logger = logging.getLogger(__name__)

#: The ONNX opset of the exported graph.
OPSET = 17
#: Largest absolute difference allowed between the exported model's logits and PyTorch's.
TOLERANCE = 1e-3


class ExportFormat(enum.Enum):
    """What :func:`export_model` writes."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What an export wrote and measured.

    Attributes:
        path: The exported file.
        format: ``onnx`` or ``torchscript``.
        max_abs_diff: Largest absolute logit difference against PyTorch on the check batch (float model).
        int8: With ``--int8``: the quantised file, its check difference, and the top-1 errors on ``--val``.
    """

    path: Path
    format: str
    max_abs_diff: float
    int8: dict[str, Any] | None = None


def _normalised(model: Any, mean: list[float], std: list[float]) -> Any:
    class Normalised(torch.nn.Module):
        """The eval model behind the checkpoint's normalisation (0-255 RGB in, logits out)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model((x - self.mean) / self.std)

    return Normalised().eval()


def _check_batch(checkpoint: Any, val: Any, images: Any, size: int, batch: int) -> np.ndarray:
    """Centre crops of ``val`` (NCHW float32, 0-255), or seeded random pixels without one."""
    if val is None:
        return np.random.default_rng(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
    views, _ = next(iter(center_crop_batches(checkpoint, val, images, batch_size=batch)))
    return np.ascontiguousarray(views.transpose(0, 3, 1, 2)).astype(np.float32)


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _val_top1_errors(
    paths: list[Path], checkpoint: Any, val: Any, images: Any, category_ids: np.ndarray
) -> list[float]:
    """Top-1 error of each ONNX model on the centre crops of a labelled JSON (decoded once for all of them)."""
    sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    base = CompetitionDataset(val, images, category_ids=category_ids)
    ids, labels = load_labels(val)
    expected = labels[index_of(ids, base.image_ids)]
    wrong = [0] * len(sessions)
    for views, index in center_crop_batches(checkpoint, val, images):
        x = np.ascontiguousarray(views.transpose(0, 3, 1, 2)).astype(np.float32)
        for i, session in enumerate(sessions):
            predicted = category_ids[session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)]
            wrong[i] += int((predicted != expected[index]).sum())
    return [w / max(len(expected), 1) for w in wrong]


def export_model(
    checkpoint: str | os.PathLike,
    *,
    format: ExportFormat | str,
    out: str | os.PathLike,
    int8: bool = False,
    val: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    check_batch: int = 8,
) -> ExportReport:
    """Export a checkpoint's eval model and check it against PyTorch.

    Args:
        checkpoint: A checkpoint file, stem or run folder (its ``best``).
        format: ``onnx`` or ``torchscript``.
        out: The file to write (``.onnx`` / ``.pt`` by convention); ``--int8`` writes ``STEM.int8.onnx`` beside it.
        int8: Also write a dynamically quantised int8 model (ONNX only).
        val: A labelled JSON: its centre crops are the check batch, and with ``int8`` the float and int8 top-1
            errors are measured on all of it.
        images: Folder of ``val``'s images (default: the JSON's folder).
        check_batch: Images in the check batch.

    Raises:
        ValueError: ``int8`` with TorchScript, or an exported model whose logits differ from PyTorch's by more
            than :data:`TOLERANCE` (the file is removed).
    """
    format = ExportFormat(format)
    if int8 and format is not ExportFormat.ONNX:
        raise ValueError("--int8 quantises with ONNX Runtime: use --format onnx")
    model, metadata = load_model(checkpoint)
    config = metadata.get("data_config") or {}
    size = int(max(config.get("input_size", [3, 224, 224])[1:]))
    wrapped = _normalised(model, config.get("mean", [0.485, 0.456, 0.406]), config.get("std", [0.229, 0.224, 0.225]))
    x = _check_batch(checkpoint, val, images, size, check_batch)
    with torch.no_grad():
        want = wrapped(torch.from_numpy(x)).numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    example = torch.from_numpy(x[:1])
    if format is ExportFormat.ONNX:
        torch.onnx.export(
            wrapped, (example,), str(tmp), input_names=["pixels"], output_names=["logits"], opset_version=OPSET,
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
        got = _onnx_logits(tmp, x)
    else:
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, example)
        traced.save(str(tmp))
        got = torch.jit.load(str(tmp)).eval()(torch.from_numpy(x)).detach().numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{out}: the exported model's logits differ from PyTorch's by {diff:.3g} > {TOLERANCE}")
    os.replace(tmp, out)
    _logger.info("exported %s (%s): logits within %.2g of PyTorch on %d image(s)", out, format.value, diff, len(x))
    category_ids = np.asarray(metadata["category_ids"], dtype=np.int64)
    record: dict[str, Any] = {
        "format": format.value, "checkpoint": str(checkpoint), "model": metadata["model"],
        "category_ids": category_ids.tolist(), "input": {"name": "pixels", "shape": ["batch", 3, size, size],
        "scale": "RGB 0-255, normalised inside", "crop_pct": config.get("crop_pct"),
        "interpolation": config.get("interpolation")}, "output": "logits", "opset": OPSET if
        format is ExportFormat.ONNX else None, "check": {"images": len(x), "max_abs_diff": diff,
        "tolerance": TOLERANCE, "inputs": "val centre crops" if val else "random pixels"},
    }  # fmt: skip
    quantised = None
    if int8:
        quantised = _quantise(out, x, want, checkpoint=checkpoint, val=val, images=images, category_ids=category_ids)
        record["int8"] = quantised
    write_atomic(out.with_name(out.name + ".json"), json.dumps(record, indent=2))
    return ExportReport(path=out, format=format.value, max_abs_diff=diff, int8=quantised)


def _quantise(
    out: Path, x: np.ndarray, want: np.ndarray, *, checkpoint: Any, val: Any, images: Any, category_ids: np.ndarray
) -> dict[str, Any]:
    """Dynamic int8 quantisation of an exported ONNX file; its difference and (with ``val``) the error change."""
    # lazy: the quantiser imports onnx and its tools (0.5 s more), needed only with --int8
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    target = out.with_name(out.stem + ".int8.onnx")
    tmp = target.with_name(f".{target.name}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per tensor on the root logger
    prepared = target.with_name(f".{target.name}.prep")
    try:
        quant_pre_process(str(out), str(prepared))  # shape inference and graph fusions, as ONNX Runtime advises
        quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)
    os.replace(tmp, target)
    result: dict[str, Any] = {
        "path": str(target), "bytes": target.stat().st_size, "float_bytes": out.stat().st_size,
        "max_abs_diff": float(np.abs(_onnx_logits(target, x) - want).max()),
    }  # fmt: skip
    if val is not None:
        result["val"] = str(val)
        errors = _val_top1_errors([out, target], checkpoint, val, images, category_ids)
        result["float_top1_error"], result["int8_top1_error"] = errors
        result["top1_error_change"] = result["int8_top1_error"] - result["float_top1_error"]
        _logger.info("int8: %s, top-1 error %.4f → %.4f on %s (%d → %d bytes)", target, result["float_top1_error"],
                     result["int8_top1_error"], val, result["float_bytes"], result["bytes"])  # fmt: skip
    return result
