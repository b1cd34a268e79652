"""Adaptive Training Sample Selection (ATSS; Zhang et al. 2020).

Per ground truth: take the ``topk`` anchors of every FPN level whose centres lie closest to
its centre; their IoUs with it give an adaptive threshold ``mean + std``; a candidate whose
IoU reaches the threshold (capped at the best candidate's IoU) and whose centre lies inside
the box is positive. An anchor
positive for several ground truths goes to the one it overlaps most. Everything else is
negative (ATSS ignores nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detectors.assigners.base import NEGATIVE, POSITIVE, Assigner, AssignResult, all_negative
from detectors.box_ops import box_centers, box_iou, points_inside_boxes

# An anchor centre must lie at least this far (pixels) inside the box (mmdetection's margin).
INSIDE_MARGIN = 0.01


@dataclass(frozen=True, kw_only=True)
class ATSSAssigner(Assigner):
    """ATSS behind the :class:`Assigner` contract (ignores ``cls_probs``)."""

    topk: int = 9  # candidates per level per ground truth, nearest centres first

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")

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
        num_anchors = anchors.shape[0]
        if gt_boxes.shape[0] == 0 or num_anchors == 0:
            return all_negative(num_anchors, anchors.device)
        per_level = num_anchors_per_level or [num_anchors]
        iou = box_iou(anchors, gt_boxes)  # [A, G]
        anchor_centres = box_centers(anchors)  # [A, 2]
        distance = torch.cdist(anchor_centres, box_centers(gt_boxes))  # [A, G]

        candidates = []  # per level: [k_l, G] anchor indices
        start = 0
        for count in per_level:
            k = min(self.topk, count)
            if k:
                nearest = distance[start : start + count].topk(k, dim=0, largest=False).indices
                candidates.append(nearest + start)
            start += count
        cand = torch.cat(candidates)  # [K, G]
        cand_iou = iou.gather(0, cand)  # [K, G]
        # Unbiased std, as the paper's code; one candidate has no spread (std 0, not NaN).
        std = cand_iou.std(dim=0) if cand.shape[0] > 1 else torch.zeros_like(cand_iou[0])
        # Capped at the best candidate's IoU (our addition): with few candidates (k = 2 gives
        # mean + std > max) a ground truth would otherwise lose even a perfect anchor.
        threshold = torch.min(cand_iou.mean(dim=0) + std, cand_iou.amax(dim=0))  # [G]

        inside = points_inside_boxes(anchor_centres, gt_boxes, margin=INSIDE_MARGIN)  # [A, G]
        selected = torch.zeros_like(iou, dtype=torch.bool)  # [A, G]
        selected.scatter_(0, cand, cand_iou >= threshold[None, :])
        is_pos = selected & inside & (iou > 0)  # [A, G]
        masked = torch.where(is_pos, iou, torch.full_like(iou, -1.0))
        best_iou, best_gt = masked.max(dim=1)  # [A]
        positive = best_iou >= 0
        labels = torch.where(positive, POSITIVE, NEGATIVE)
        matched_gt = torch.where(positive, best_gt, -1)
        return AssignResult(labels=labels, matched_gt=matched_gt, num_recalled=0)
