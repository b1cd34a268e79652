"""PAA (Kim & Lee, ECCV 2020): ATSS's head and anchors (one square of 8 · stride per
location, R-CNN deltas) whose centerness conv predicts the IoU of the box instead; PAA
assignment (:class:`~detectors.assigners.PAAAssigner`, or IAC); the reference's losses and
post-processing:

- box loss: GIoU, each positive weighted by the IoU of its (detached) prediction and
  normalised by the sum of those IoUs; without the IoU branch, unweighted over ``num_pos``;
- IoU branch: binary cross-entropy to that IoU over the positives, weight ``iou_weight``;
- test-time score ``sqrt(p · iou)`` (through :meth:`FCOS.postprocess`), then optionally
  score voting: each detection's box becomes the mean of the same-class candidates
  overlapping it, weighted by ``exp(−(1 − IoU)² / σ) · score``.

Only the box loss and the detection boxes differ from :class:`~detectors.models.atss.ATSS`;
the shared matching hands the predictions to assigners that ask for them (PAA's does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors import box_ops
from detectors.models.atss import ATSS
from detectors.models.dense import Positives, Targets, global_mean

VOTING_SIGMA = 0.025  # σ of the score-voting weight (the reference's value)
VOTING_MIN_IOU = 0.01  # candidates must overlap the detection by more than this to vote
IOU_WEIGHT_EPS = 1e-12  # floor of the box-loss weights (all-zero IoUs: a plain mean)


def score_voting(
    det_boxes: Tensor,
    det_labels: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_labels: Tensor,
    *,
    sigma: float = VOTING_SIGMA,
) -> Tensor:
    """Voted boxes [K, 4] of the detections ``det_boxes`` [K, 4] / ``det_labels`` [K] from
    the candidates ``cand_boxes`` [M, 4], ``cand_scores`` [M], ``cand_labels`` [M] (xyxy).

    Vectorised over detections; a detection without voters keeps its box."""
    iou = box_ops.box_iou(det_boxes, cand_boxes)  # [K, M]
    voters = (iou > VOTING_MIN_IOU) & (det_labels[:, None] == cand_labels[None, :])
    weight = torch.exp(-(1 - iou).square() / sigma) * cand_scores[None, :] * voters  # [K, M]
    total = weight.sum(dim=1, keepdim=True)  # [K, 1]
    voted = (weight @ cand_boxes) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, voted, det_boxes)


class PAA(ATSS):
    def __init__(self, *, score_voting: bool, iou_weight: float, **atss: Any) -> None:
        super().__init__(**atss)
        self.score_voting = score_voting
        self.iou_weight = iou_weight

    def regression_loss(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        iou_logits: Tensor | None = outputs["centerness"]  # [B, N]: the IoU branch, or None
        if len(pos.gt_boxes) == 0:  # keep every branch in the graph (DDP needs its gradients)
            if iou_logits is not None:
                outputs["iou_loss_sum"] = iou_logits.sum() * 0
            return outputs["box_reg"].sum() * 0
        per_pos = self.box_loss(outputs, positive, pos)  # [P] 1 − GIoU
        if iou_logits is None:
            return self.reg_weight * per_pos.sum()
        iou = box_ops.elementwise_box_iou(pos.pred_boxes.detach(), pos.gt_boxes)  # [P]
        outputs["iou_loss_sum"] = F.binary_cross_entropy_with_logits(
            iou_logits[positive].float(), iou, reduction="sum"
        )
        # Σ IoU·ℓ / Σ IoU (sums averaged over DDP workers, as the reference); the base
        # divides what this returns by num_pos, so multiply by it here.
        weight = iou.clamp(min=IOU_WEIGHT_EPS)
        num_pos = global_mean(positive.sum().float()).clamp(min=1.0)
        return self.reg_weight * (weight * per_pos).sum() * num_pos / global_mean(weight.sum())

    def losses(
        self, outputs: dict[str, Any], targets: Targets
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses, stats = super().losses(outputs, targets)
        if "iou_loss_sum" in outputs:  # written by regression_loss above
            num_pos = global_mean(stats["num_pos"]).clamp(min=1.0)
            losses["loss_iou"] = self.iou_weight * outputs["iou_loss_sum"] / num_pos
        return losses, stats

    def detection_boxes(
        self, keep: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor
    ) -> Tensor:
        if not self.score_voting:
            return boxes[keep]
        return score_voting(boxes[keep], labels[keep], boxes, scores, labels)
