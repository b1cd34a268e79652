"""Max-IoU assignment (RetinaNet, torchvision's ``Matcher``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detectors.assigners.base import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    Assigner,
    AssignResult,
    all_negative,
)
from detectors.box_ops import box_iou_iomin


def check_thresholds(fg_iou: float, bg_iou: float) -> None:
    """Raise ``ValueError`` unless ``0 <= bg_iou <= fg_iou <= 1``."""
    if not 0.0 <= bg_iou <= fg_iou <= 1.0:
        raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")


def low_quality_positives(iou: Tensor) -> Tensor:
    """Anchors that are the best anchor of some ground truth, ``iou`` [A, G] -> [A] bool.

    torchvision / detectron2 ``Matcher`` semantics: every anchor tied for a ground truth's
    highest IoU qualifies. One deviation: a ground truth that overlaps no anchor (best IoU 0)
    selects nothing, where ``Matcher`` would select every anchor (all tied at 0).
    """
    best_per_gt = iou.max(dim=0).values  # [G]
    is_best = (iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)  # [A, G]
    return is_best.any(dim=1)


def max_iou_labels(
    iou: Tensor, *, fg_iou: float, bg_iou: float, allow_low_quality_matches: bool
) -> tuple[Tensor, Tensor]:
    """Max-IoU labels from an IoU matrix ``iou`` [A, G] with G >= 1.

    Returns ``(labels [A] int64, matched_gt [A] int64)``: positive where the best IoU is
    ``>= fg_iou`` (or where a low-quality match applies), matched to the anchor's best ground
    truth (the first on ties, also for low-quality matches, as ``Matcher`` does); negative
    where the best IoU is ``< bg_iou``; ignored in between. IoU 0 is never positive.
    """
    max_iou, argmax_iou = iou.max(dim=1)  # [A], [A]
    positive = (max_iou >= fg_iou) & (max_iou > 0)
    if allow_low_quality_matches:
        positive |= low_quality_positives(iou)
    labels = torch.where(max_iou < bg_iou, NEGATIVE, IGNORED)
    labels = torch.where(positive, POSITIVE, labels)
    matched_gt = torch.where(positive, argmax_iou, -1)
    return labels, matched_gt


@dataclass(frozen=True, kw_only=True)
class MaxIoUAssigner(Assigner):
    """RetinaNet's rule: positive at IoU >= fg, negative below bg, ignored in between."""

    fg_iou: float = 0.5  # an anchor whose best IoU reaches this is positive
    bg_iou: float = 0.4  # an anchor whose best IoU is below this is negative
    allow_low_quality_matches: bool = False  # every ground truth keeps its best anchor(s)

    def __post_init__(self) -> None:
        check_thresholds(self.fg_iou, self.bg_iou)

    def assign(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        cls_probs: Tensor | None = None,
        *,
        iteration: int = 0,
        num_anchors_per_level: list[int] | None = None,
        pred_boxes: Tensor | None = None,
    ) -> AssignResult:
        if gt_boxes.shape[0] == 0:
            return all_negative(anchors.shape[0], anchors.device)
        labels, matched_gt = max_iou_labels(
            box_iou_iomin(anchors, gt_boxes)[0],  # the column-wise IoU is the fast one
            fg_iou=self.fg_iou,
            bg_iou=self.bg_iou,
            allow_low_quality_matches=self.allow_low_quality_matches,
        )
        return AssignResult(labels=labels, matched_gt=matched_gt, num_recalled=0)
