"""Varifocal Loss (VarifocalNet, Zhang et al. CVPR 2021): asymmetric IoU-aware focal loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors.losses.classification_base import (
    ElementwiseClassificationLoss,
    check_elementwise_inputs,
)


def check_varifocal_params(alpha: float, gamma: float) -> None:
    if alpha < 0 or gamma < 0:
        raise ValueError(f"alpha and gamma must be >= 0, got alpha={alpha}, gamma={gamma}")


def varifocal_loss(
    logits: Tensor, targets: Tensor, *, alpha: float = 0.75, gamma: float = 2.0
) -> Tensor:
    """Varifocal Loss per element, no reduction.

    ``VFL(p, q) = q · BCE(p, q)`` where ``q > 0`` and ``α · p^γ · BCE(p, 0)`` where ``q = 0``,
    with ``p = σ(x)`` and ``BCE(p, q) = −(q log p + (1 − q) log(1 − p))``: positives are
    weighted by their own IoU target (the paper's IoU-weighted variant) and never
    down-weighted by a focal factor; only negatives are (by ``α p^γ``).

    Args:
        logits: [N, C] raw scores x.
        targets: [N, C] in [0, 1], q: each positive's IoU in its class column, 0 elsewhere;
            constants (no gradient). The case split is on the value, so a positive whose IoU
            is exactly 0 is treated as a negative (its weight q would be 0 anyway).
        alpha: weight of the negatives (paper: 0.75).
        gamma: focusing exponent on the negatives' probability (paper: 2).

    Returns:
        [N, C] loss, >= 0. BCE comes from ``binary_cross_entropy_with_logits`` and ``p^γ``
        from ``exp(γ · logsigmoid(x))``, whose gradient ``γ (1 − p) p^γ`` is finite for any
        γ >= 0 and any logit, so values and gradients stay finite at logits of ±30 and at
        targets of exactly 0 and 1.
    """
    check_varifocal_params(alpha, gamma)
    targets = targets.detach().to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [N, C]
    negative_weight = alpha * torch.exp(gamma * F.logsigmoid(logits))  # [N, C], α σ^γ
    weight = torch.where(targets > 0, targets, negative_weight)  # [N, C]
    return weight * bce


@dataclass(frozen=True, kw_only=True)
class VarifocalLoss(ElementwiseClassificationLoss):
    """``loss(logits [N, C], targets [N, C]) -> [N, C]``, targets = IoU (no reduction)."""

    uses_iou_targets: ClassVar[bool] = True

    alpha: float = 0.75  # weight of the negatives (positives are weighted by their IoU)
    gamma: float = 2.0  # focusing exponent on the negatives' probability

    def __post_init__(self) -> None:
        check_varifocal_params(self.alpha, self.gamma)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_elementwise_inputs(logits, targets)
        return varifocal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)
