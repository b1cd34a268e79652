"""FoveaBox assignment (Kong et al. 2020): a point is positive for a ground truth when it
lies in the box's "fovea" (the box shrunk by ``sigma`` about its centre) and the box's
scale ``sqrt(w·h)`` suits the point's level, ``[lower·stride, upper·stride]`` (the paper's
overlapping ranges 32-64, 64-128, ... at ``lower = 2``, ``upper = 8``; the finest level has
no lower bound, the coarsest no upper one). Several candidates: the smallest box wins.
Points are passed as stride-sized cells, as for :class:`~detectors.assigners.fcos.FCOSAssigner`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detectors.assigners.base import Assigner, AssignResult, all_negative
from detectors.assigners.fcos import level_ranges, points_and_strides, smallest_box_match
from detectors.box_ops import box_area, points_inside_boxes, scale_boxes


@dataclass(frozen=True, kw_only=True)
class FoveaAssigner(Assigner):
    """FoveaBox behind the :class:`Assigner` contract (ignores ``cls_probs``)."""

    sigma: float = 0.4  # fovea side as a fraction of the box side
    scale_lower: float = 2.0  # a level takes boxes with sqrt(w·h) >= scale_lower·stride
    scale_upper: float = 8.0  # ... and <= scale_upper·stride

    def __post_init__(self) -> None:
        if not 0 < self.sigma <= 1:
            raise ValueError(f"sigma must be in (0, 1], got {self.sigma}")
        if not 0 <= self.scale_lower <= self.scale_upper:
            raise ValueError("need 0 <= scale_lower <= scale_upper")

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
        candidate = points_inside_boxes(points, scale_boxes(gt_boxes, self.sigma))  # [A, G]
        low, high = level_ranges(
            strides,
            num_anchors_per_level or [num_anchors],
            lower=self.scale_lower,
            upper=self.scale_upper,
        )
        scale = box_area(gt_boxes).sqrt()[None, :]  # [1, G]
        candidate &= (scale >= low[:, None]) & (scale <= high[:, None])
        candidate &= (box_area(anchors) > 0)[:, None]  # a zero-area cell overlaps nothing
        return smallest_box_match(candidate, gt_boxes)
