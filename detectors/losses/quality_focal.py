"""Quality Focal Loss (GFL, Li et al. NeurIPS 2020): focal loss on IoU-valued targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from detectors.losses.classification_base import (
    ElementwiseClassificationLoss,
    check_elementwise_inputs,
)


def check_beta(beta: float) -> None:
    """β must be 0 or at least 1: for 0 < β < 1, ``|y − σ|^β`` has an infinite slope at
    ``σ = y``, which float sigmoids reach exactly (σ(30) == 1 in float32), so the gradient
    would be NaN there."""
    if not (beta == 0 or beta >= 1):
        raise ValueError(f"beta must be 0 or >= 1, got {beta}")


def quality_focal_loss(logits: Tensor, targets: Tensor, *, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss per element, no reduction.

    ``QFL(x, y) = −|y − σ(x)|^β · (y log σ(x) + (1 − y) log(1 − σ(x)))``

    Args:
        logits: [N, C] raw scores x.
        targets: [N, C] in [0, 1], y: each positive's IoU with its ground truth in its class
            column, 0 everywhere else; treated as constants (no gradient). A positive with
            IoU exactly 0 is indistinguishable from background here, as in the formula.
        beta: focusing exponent (paper: 2); 0 gives plain soft-target BCE.

    Returns:
        [N, C] loss, >= 0. The cross-entropy comes from ``binary_cross_entropy_with_logits``
        (log-sum-exp form), so values and gradients stay finite at logits of ±30 and beyond
        and at targets of exactly 0 and 1.
    """
    check_beta(beta)
    targets = targets.detach().to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [N, C]
    modulating = (targets - logits.sigmoid()).abs().pow(beta)  # [N, C], 0 when σ == y
    return modulating * bce


@dataclass(frozen=True, kw_only=True)
class QualityFocalLoss(ElementwiseClassificationLoss):
    """``loss(logits [N, C], targets [N, C]) -> [N, C]``, targets = IoU (no reduction)."""

    uses_iou_targets: ClassVar[bool] = True

    beta: float = 2.0  # focusing exponent on |y − σ|

    def __post_init__(self) -> None:
        check_beta(self.beta)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_elementwise_inputs(logits, targets)
        return quality_focal_loss(logits, targets, beta=self.beta)
