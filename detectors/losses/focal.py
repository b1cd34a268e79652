"""Focal Loss (Lin et al. 2017), the RetinaNet member of the classification-loss slot."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from detectors.losses.classification_base import (
    ElementwiseClassificationLoss,
    check_elementwise_inputs,
)


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss (Lin et al. 2017) per element, no reduction.

    logits, targets: [N, C]; targets in {0, 1} (or soft in [0, 1]), treated as constants.
    Returns [N, C]. ``alpha < 0`` disables the class-balance weight.
    """
    targets = targets.detach()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


@dataclass(frozen=True, kw_only=True)
class FocalLoss(ElementwiseClassificationLoss):
    """``loss(logits [N, C], targets [N, C]) -> [N, C]`` with one-hot targets (no reduction)."""

    alpha: float = 0.25  # weight of the positive term, 1 − alpha of the negative; < 0: none
    gamma: float = 2.0  # focusing exponent on (1 − p_t)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_elementwise_inputs(logits, targets)
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)
