"""Classification heads over a timm CNN's feature map: average pooling (timm's own) or iSQRT-COV.

iSQRT-COV is the covariance pooling of the iNat2018 winners (Li, Xie, Wang, Gao, "Towards Faster Training of
Global Covariance Pooling Networks by Iterative Matrix Square Root Normalization", CVPR 2018,
https://arxiv.org/abs/1712.01034; reference code https://github.com/jiangtaoxie/fast-MPN-COV). From the last
feature map of ``C`` channels and ``M = H × W`` positions:

1. a 1×1 convolution reduces ``C`` to ``d`` channels (BatchNorm + ReLU after it; ``d = 256`` in the paper);
2. the ``d × d`` covariance of the ``M`` positions, ``Σ = X Ī Xᵀ`` with ``Ī = (I - 11ᵀ/M) / M``;
3. pre-normalisation by the trace, ``A = Σ / tr Σ``, so that Newton–Schulz converges;
4. ``N`` coupled Newton–Schulz iterations, ``T = (3I - Z Y) / 2``, ``Y ← Y T``, ``Z ← T Z`` from ``Y = A``,
   ``Z = I``, with ``Y → A^½`` (only matrix products: fast on a GPU, unlike an eigendecomposition);
5. post-compensation ``C = sqrt(tr Σ) · Y_N``, which undoes the pre-normalisation's scale;
6. the upper triangle of the symmetric ``C`` (diagonal included) as a ``d(d+1)/2`` vector (32,896 for
   ``d = 256``), dropout and a linear classifier.

With few iterations (3–5, as in the paper) ``Y_N`` is an approximation of the square root that is exact for
eigenvalues of ``A`` near 1 and compresses the small ones; the paper trains through it and finds 3–5
iterations as good as the exact root. The covariance and the iterations run in float32 even under autocast:
Newton–Schulz diverges in half precision.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import torch
from torch import nn

__all__ = [
    "HeadType",
    "covariance",
    "isqrt",
    "triu_vector",
    "CovariancePool",
    "ISqrtCovHead",
    "CovarianceModel",
    "unused_modules",
]

_logger = logging.getLogger(__name__)

_EPS = 1e-8


class HeadType(enum.Enum):
    """The classification head over the backbone's feature map."""

    AVG = "avg"
    """timm's own head: global average pooling and a linear classifier."""
    ISQRTCOV = "isqrtcov"
    """iSQRT-COV: 1×1 reduction, covariance, Newton–Schulz square root, upper triangle, linear classifier."""


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The covariance of the positions of a batch of feature maps, ``(B, d, H, W)`` → ``(B, d, d)``.

    Divides by the number of positions ``M`` (the paper's ``Ī = (I - 11ᵀ/M) / M``), in float32.
    """
    x = x.flatten(2).float()
    x = x - x.mean(dim=2, keepdim=True)
    return torch.bmm(x, x.transpose(1, 2)) / x.shape[2]


def isqrt(sigma: torch.Tensor, *, iterations: int = 5) -> torch.Tensor:
    """Approximate square roots of a batch of symmetric positive semi-definite matrices by Newton–Schulz.

    Trace pre-normalisation, ``iterations`` coupled Newton–Schulz steps, trace post-compensation; a batched
    form of the reference code's ``Sqrtm`` (the first step starts from ``Z = I`` and the last updates only
    ``Y``, saving two products). Runs in float32 whatever the input dtype or autocast state.

    Args:
        sigma: ``(B, d, d)`` symmetric positive semi-definite matrices (covariances).
        iterations: Newton–Schulz steps (≥ 1; 3–5 in the paper). More steps come closer to the exact root of
            matrices whose normalised eigenvalues are small (large ``d``, ill-conditioned).

    Returns:
        ``(B, d, d)`` float32 approximations of ``sigma^½``. A zero matrix (e.g. a 1×1 feature map, whose
        covariance is zero) gives zeros, not NaN.

    Raises:
        ValueError: ``iterations`` < 1 or a non-square input.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if sigma.ndim != 3 or sigma.shape[1] != sigma.shape[2]:
        raise ValueError(f"expected a (B, d, d) batch of matrices, got shape {tuple(sigma.shape)}")
    with torch.autocast(device_type=sigma.device.type, enabled=False):
        sigma = sigma.float()
        d = sigma.shape[1]
        identity = torch.eye(d, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
        trace = sigma.diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(_EPS).view(-1, 1, 1)
        a = sigma / trace
        if iterations == 1:
            y = 0.5 * torch.bmm(a, 3.0 * identity - a)
        else:
            t = 0.5 * (3.0 * identity - a)
            y, z = torch.bmm(a, t), t
            for _ in range(iterations - 2):
                t = 0.5 * (3.0 * identity - torch.bmm(z, y))
                y, z = torch.bmm(y, t), torch.bmm(t, z)
            y = 0.5 * torch.bmm(y, 3.0 * identity - torch.bmm(z, y))
        return y * trace.sqrt()


def triu_vector(matrices: torch.Tensor) -> torch.Tensor:
    """The upper triangles (diagonal included) of ``(B, d, d)`` matrices as ``(B, d(d+1)/2)`` row-major vectors."""
    d = matrices.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=matrices.device)
    return matrices.flatten(1).index_select(1, rows * d + cols)


class CovariancePool(nn.Module):
    """iSQRT-COV pooling: ``(B, C, H, W)`` feature maps → ``(B, d(d+1)/2)`` float32 vectors.

    Args:
        in_channels: Channels of the backbone's feature map.
        dim: Channels after the 1×1 reduction (``d``).
        iterations: Newton–Schulz steps.
    """

    def __init__(self, in_channels: int, *, dim: int = 256, iterations: int = 5) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"head dim must be ≥ 2, got {dim}")
        if iterations < 1:
            raise ValueError(f"iterations must be ≥ 1, got {iterations}")
        self.in_channels = in_channels
        self.dim = dim
        self.iterations = iterations
        self.out_features = dim * (dim + 1) // 2
        self.reduce = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"iSQRT-COV pools a CNN feature map (B, C, H, W); got shape {tuple(x.shape)} "
                "(a transformer's tokens? use head avg)"
            )
        if x.shape[1] != self.in_channels and x.shape[3] == self.in_channels:
            x = x.permute(0, 3, 1, 2)  # timm models with (B, H, W, C) features: Swin, MambaOut, Hiera …
        x = self.act(self.bn(self.reduce(x)))
        with torch.autocast(device_type=x.device.type, enabled=False):
            return triu_vector(isqrt(covariance(x.float()), iterations=self.iterations))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, iterations={self.iterations}, out_features={self.out_features}"


class ISqrtCovHead(nn.Module):
    """:class:`CovariancePool`, dropout and a linear classifier (``fc``).

    Args:
        in_channels: Channels of the backbone's feature map.
        num_classes: Classifier outputs; 0 leaves the pooled vector (an ``Identity`` classifier).
        dim: Channels after the 1×1 reduction.
        iterations: Newton–Schulz steps.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self, in_channels: int, *, num_classes: int, dim: int = 256, iterations: int = 5, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.pool = CovariancePool(in_channels, dim=dim, iterations=iterations)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.pool.out_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x))
        return x if pre_logits else self.fc(x)


class CovarianceModel(nn.Module):
    """A timm CNN without its head (``backbone``) followed by an :class:`ISqrtCovHead` (``head``).

    Keeps the parts of timm's model interface the kit uses: ``model(x)``, ``forward_features``,
    ``forward_head``, ``get_classifier``, ``reset_classifier``, ``num_classes``, ``num_features``,
    ``feature_info`` (module names under ``backbone.``) and ``pretrained_cfg``/``default_cfg`` (the backbone's,
    for the data config; its ``classifier`` is ``head.fc``).

    Args:
        backbone: A timm model whose ``forward_features`` returns ``(B, C, H, W)`` with ``C = num_features``;
            its own classifier is dropped.
        num_classes: Classifier outputs.
        dim: Channels after the 1×1 reduction.
        iterations: Newton–Schulz steps.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self, backbone: nn.Module, *, num_classes: int, dim: int = 256, iterations: int = 5, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        # Drop what timm applies after pooling (classifier; ConvNeXt's head norm, MobileNetV3's conv_head): it
        # would sit unused, which DistributedDataParallel refuses and freezing would miscount. timm's own pruning
        # first, then whatever forward_features still does not use, found by running it: which modules timm's
        # pruning leaves differs between timm versions (ConvNeXt's head.norm in 1.0.29), what runs does not.
        if hasattr(backbone, "prune_intermediate_layers"):
            backbone.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        elif hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        for name in unused_modules(backbone):
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, nn.Identity())
            _logger.debug("isqrtcov head: %s pruned (forward_features does not use it)", name)
        self.backbone = backbone
        self.head = ISqrtCovHead(
            int(backbone.num_features), num_classes=num_classes, dim=dim, iterations=iterations, drop_rate=drop_rate
        )
        self.num_classes = num_classes
        self.num_features = self.head.pool.out_features
        self.head_hidden_size = self.num_features
        # The backbone's stages under their names here, for freezing all but the last N of them.
        self.feature_info = [
            {**info, "module": f"backbone.{info['module']}"} for info in getattr(backbone, "feature_info", None) or []
        ]
        cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        if cfg.get("first_conv"):
            cfg["first_conv"] = f"backbone.{cfg['first_conv']}"
        cfg.update(classifier="head.fc", num_classes=num_classes)
        self.pretrained_cfg = cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (older timm)."""
        return self.pretrained_cfg

    @property
    def head_config(self) -> dict[str, Any]:
        """The head's options, as stored in checkpoint metadata."""
        return {"type": HeadType.ISQRTCOV.value, "dim": self.head.pool.dim, "iterations": self.head.pool.iterations}

    def get_classifier(self) -> nn.Module:
        """The final classifier (``head.fc``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier of ``num_classes`` outputs (0: none); ``global_pool`` is ignored (covariance)."""
        del global_pool
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        fc = self.head.fc
        device = next(self.head.parameters()).device
        self.head.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if isinstance(fc, nn.Linear) and isinstance(self.head.fc, nn.Linear):
            self.head.fc.to(dtype=fc.weight.dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in the backbone, where timm supports it."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map ``(B, C, H, W)``."""
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (or, with ``pre_logits``, the pooled covariance vector) of a feature map."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def unused_modules(backbone: nn.Module, *, size: int = 64) -> list[str]:
    """The outermost submodules of ``backbone`` with parameters that its ``forward_features`` does not use.

    Found by running it once on a ``size``-pixel image (eval mode, the state restored after): a module is unused
    when it is never called and none of its parameters gets a gradient. A dry run rather than a list of attribute
    names, which change between timm versions.
    """
    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: called.add(id(m))) for m in backbone.modules()]
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training, saved = backbone.training, {n: p.grad for n, p in backbone.named_parameters()}
    try:
        backbone.eval()
        for p in backbone.parameters():
            p.grad = None
        with torch.enable_grad():
            backbone.forward_features(torch.zeros(1, 3, size, size, device=device)).float().sum().backward()
        used = {id(p) for p in backbone.parameters() if p.grad is not None}
    finally:
        for hook in hooks:
            hook.remove()
        backbone.train(was_training)
        for n, p in backbone.named_parameters():
            p.grad = saved[n]
    unused: list[str] = []
    for name, module in backbone.named_modules():
        owned = list(module.parameters())
        if not name or not owned or id(module) in called or any(id(p) in used for p in owned):
            continue
        if not any(name.startswith(f"{outer}.") for outer in unused):
            unused.append(name)
    return unused
