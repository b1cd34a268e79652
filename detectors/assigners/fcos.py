"""Point assignment (FCOS; Tian et al. 2019), and helpers FoveaBox shares.

Point-based heads pass, as ``anchors``, the stride-sized cell around each point (``point
± stride / 2``): the cell centre is the point and its width the level's stride. A point is
positive for a ground truth when it lies inside the box (with centre sampling: also within
``center_sampling_radius · stride`` of the box centre) and the box's size suits the point's
level: its largest side distance ``max(l, t, r, b)`` lies in ``[4·stride, 8·stride]`` (the
FCOS ranges 0-64-128-256-512-∞ for strides 8-128; the finest level has no lower bound and
the coarsest no upper one). Several candidates: the smallest box wins. Nothing is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from detectors.assigners.base import NEGATIVE, POSITIVE, Assigner, AssignResult, all_negative
from detectors.box_ops import box_area, box_centers, pairwise_ltrb


def level_ranges(
    strides: Tensor, per_level: list[int], *, lower: float, upper: float
) -> tuple[Tensor, Tensor]:
    """Per point, the object-size range ``[lower·stride, upper·stride]`` of its level, open
    below on the first level and above on the last -> ``(low [A], high [A])``."""
    low, high = strides * lower, strides * upper
    first, last = per_level[0], sum(per_level[:-1])
    low[:first] = 0.0
    high[last:] = math.inf
    return low, high


def smallest_box_match(candidate: Tensor, gt_boxes: Tensor) -> AssignResult:
    """Labels from a candidate matrix [A, G] bool: each candidate point takes the smallest
    ground truth among its candidates (FCOS / FoveaBox ambiguity rule)."""
    area = box_area(gt_boxes)[None, :].expand_as(candidate)  # [A, G]
    masked = torch.where(candidate, area, torch.full_like(area, math.inf))
    best_area, best_gt = masked.min(dim=1)  # [A]
    positive = torch.isfinite(best_area)
    labels = torch.where(positive, POSITIVE, NEGATIVE)
    return AssignResult(labels=labels, matched_gt=torch.where(positive, best_gt, -1))


def points_and_strides(anchors: Tensor) -> tuple[Tensor, Tensor]:
    """The points [A, 2] and strides [A] that the cells ``anchors`` [A, 4] stand for."""
    return box_centers(anchors), anchors[:, 2] - anchors[:, 0]


@dataclass(frozen=True, kw_only=True)
class FCOSAssigner(Assigner):
    """FCOS behind the :class:`Assigner` contract (ignores ``cls_probs``)."""

    center_sampling_radius: float = 1.5  # in strides; 0 = any point inside the box
    size_lower: float = 4.0  # a level takes boxes with max(l, t, r, b) >= size_lower·stride
    size_upper: float = 8.0  # ... and <= size_upper·stride

    def __post_init__(self) -> None:
        if self.center_sampling_radius < 0:
            raise ValueError(
                f"center_sampling_radius must be >= 0, got {self.center_sampling_radius}"
            )
        if not 0 <= self.size_lower <= self.size_upper:
            raise ValueError("need 0 <= size_lower <= size_upper")

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
        points, strides = points_and_strides(anchors)  # [A, 2], [A]
        ltrb = pairwise_ltrb(points, gt_boxes)  # [A, G, 4]
        candidate = ltrb.amin(dim=-1) > 0  # inside the box
        if self.center_sampling_radius > 0:
            # Inside the box centre ± radius·stride, clipped to the box.
            radius = (strides * self.center_sampling_radius)[:, None, None]  # [A, 1, 1]
            centres = box_centers(gt_boxes)[None]  # [1, G, 2]
            sample = torch.cat(
                [
                    torch.max(centres - radius, gt_boxes[None, :, :2]),
                    torch.min(centres + radius, gt_boxes[None, :, 2:]),
                ],
                dim=-1,
            )  # [A, G, 4]
            candidate &= (
                torch.cat(
                    [points[:, None] - sample[..., :2], sample[..., 2:] - points[:, None]], dim=-1
                ).amin(dim=-1)
                > 0
            )
        low, high = level_ranges(
            strides,
            num_anchors_per_level or [num_anchors],
            lower=self.size_lower,
            upper=self.size_upper,
        )
        reach = ltrb.amax(dim=-1)  # [A, G]
        candidate &= (reach >= low[:, None]) & (reach <= high[:, None])
        candidate &= (box_area(anchors) > 0)[:, None]  # a zero-area cell overlaps nothing
        return smallest_box_match(candidate, gt_boxes)
