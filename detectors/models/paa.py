"""PAA (Kim & Lee, ECCV 2020): ATSS's parts (head, one square anchor of 8 · stride per
location, R-CNN deltas) with an IoU quality branch; PAA assignment
(:class:`~detectors.assigners.PAAAssigner`, or IAC); the reference's losses and
post-processing:

- box loss: GIoU, each positive weighted by the IoU of its (detached) prediction and
  normalised by the sum of those IoUs; without the IoU branch, unweighted over ``num_pos``;
- IoU branch: binary cross-entropy to that IoU over the positives, weight ``iou_weight``
  (the base's :class:`~detectors.models.dense.QualityBranch`);
- test-time score ``sqrt(p · iou)`` (the base's), then optionally score voting: each
  detection's box becomes the mean of the same-class candidates overlapping it, weighted
  by ``exp(−(1 − IoU)² / σ) · score``.

Only the box loss and the detection boxes differ from the base; the shared matching hands
the predictions to assigners that ask for them (PAA's does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detectors import box_ops
from detectors.assigners import Assigner
from detectors.losses import (
    CorrelationLoss,
    DCWeighting,
    ElementwiseClassificationLoss,
    RankSortLoss,
    RegressionLoss,
)
from detectors.models.anchors import AnchorGenerator
from detectors.models.box_coders import BoxCoder
from detectors.models.dense import (
    DenseDetector,
    Positives,
    PostprocessParams,
    QualityBranch,
    global_mean,
)
from detectors.models.head import DenseHead
from detectors.postprocess import NMS

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


class PAA(DenseDetector):
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: DenseHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        assigner: Assigner,
        num_classes: int,
        cls_loss: ElementwiseClassificationLoss | RankSortLoss,
        box_loss: RegressionLoss,
        box_weight: float,
        quality: QualityBranch | None,
        correlation: CorrelationLoss,
        dc: DCWeighting | None,
        nms: NMS,
        post: PostprocessParams,
        score_voting: bool,
    ) -> None:
        super().__init__(
            backbone=backbone,
            head=head,
            anchor_generator=anchor_generator,
            box_coder=box_coder,
            assigner=assigner,
            num_classes=num_classes,
            cls_loss=cls_loss,
            box_loss=box_loss,
            box_weight=box_weight,
            quality=quality,
            correlation=correlation,
            dc=dc,
            nms=nms,
            post=post,
        )
        self.score_voting = score_voting

    def box_loss_term(
        self, outputs: dict[str, Any], positive: Tensor, pos: Positives, num_pos: Tensor
    ) -> Tensor:
        """With the IoU branch: ``box_weight · Σ IoU·ℓ / Σ IoU`` (sums averaged over DDP
        workers, as the reference); without it, the base's mean over the positives."""
        if self.quality is None or self.quality.target != "iou" or len(pos.gt_boxes) == 0:
            return super().box_loss_term(outputs, positive, pos, num_pos)
        per_pos = self.box_losses(outputs, positive, pos)  # [P] 1 − GIoU
        iou = box_ops.elementwise_box_iou(pos.pred_boxes.detach(), pos.gt_boxes)  # [P]
        weight = iou.clamp(min=IOU_WEIGHT_EPS)
        return self.box_weight * (weight * per_pos).sum() / global_mean(weight.sum())

    def detection_boxes(
        self, keep: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor
    ) -> Tensor:
        if not self.score_voting:
            return boxes[keep]
        return score_voting(boxes[keep], labels[keep], boxes, scores, labels)
