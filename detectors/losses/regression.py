"""Box regression losses (the regression-loss slot). Per positive, no reduction."""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor

from detectors import box_ops


class RegressionLoss(Protocol):
    """``loss(pred [P, 4], target [P, 4], *, pred_boxes [P, 4], gt_boxes [P, 4]) -> [P]``.

    ``pred`` and ``target`` are in the detector's regression space (its box coder's: deltas,
    side distances...); ``pred_boxes`` and ``gt_boxes`` are the decoded predictions and their
    ground truths, xyxy, for losses on boxes (GIoU). One value per positive, no reduction.
    """

    def __call__(
        self, pred: Tensor, target: Tensor, /, *, pred_boxes: Tensor, gt_boxes: Tensor
    ) -> Tensor: ...


def l1_loss(pred_deltas: Tensor, target_deltas: Tensor, **_: Tensor) -> Tensor:
    """L1 on encoded deltas, [N, 4] x [N, 4] -> [N] (RetinaNet's torchvision default)."""
    return (pred_deltas - target_deltas).abs().sum(dim=1)


def smooth_l1_loss(pred_deltas: Tensor, target_deltas: Tensor, **_: Tensor) -> Tensor:
    """Smooth L1 (β = 1/9, Detectron's RetinaNet) on encoded deltas -> [N]."""
    return F.smooth_l1_loss(pred_deltas, target_deltas, beta=1 / 9, reduction="none").sum(dim=1)


def giou_loss(
    pred_deltas: Tensor, target_deltas: Tensor, *, pred_boxes: Tensor, gt_boxes: Tensor
) -> Tensor:
    """1 − GIoU of decoded boxes, [N, 4] xyxy -> [N]."""
    return 1 - box_ops.elementwise_giou(pred_boxes, gt_boxes)


REGRESSION_LOSSES: dict[str, RegressionLoss] = {
    "l1": l1_loss,
    "smooth_l1": smooth_l1_loss,
    "giou": giou_loss,
}
