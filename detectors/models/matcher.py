"""Hungarian set matching (DETR, Carion et al. 2020; Sparse R-CNN, Sun et al. 2021).

Every ground truth gets exactly one prediction, the one-to-one assignment that minimizes

    C = w_cls · focal cost + w_L1 · ‖b/size − g/size‖₁ + w_giou · (−GIoU(b, g))

summed over the matched pairs (``scipy.optimize.linear_sum_assignment``). Predictions left
over are background. The focal cost is Sparse R-CNN's (the reference with ``use_focal``):
the focal loss of calling the prediction positive for g's class minus that of calling it
negative, ``α(1−p)^γ(−log p) − (1−α)p^γ(−log(1−p))``. Boxes are xyxy pixels; the L1 term
divides each box by its image's ``[w, h, w, h]`` so it is scale-free, as the reference does.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detectors import box_ops

# A cost that no finite assignment beats. Non-finite predictions (a diverged step) get it so
# that the matcher still returns an assignment and the NaN surfaces where the training loop
# looks for it, in the loss, instead of as a scipy error.
INVALID_COST = 1e8


def focal_class_cost(
    logits: Tensor, gt_labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Classification cost of matching each prediction to each ground truth.

    logits [N, C] (sigmoid classifier), gt_labels [M] in ``0..C-1`` -> [N, M]: the focal
    loss of "positive for g's class" minus that of "negative for it" (lower is better).
    """
    prob = logits.float().sigmoid()  # [N, C]
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()  # [N, C]
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()  # [N, C]
    return pos[:, gt_labels] - neg[:, gt_labels]  # [N, M]


def l1_box_cost(pred_boxes: Tensor, gt_boxes: Tensor, image_whwh: Tensor) -> Tensor:
    """L1 distance between boxes divided by the image's ``[w, h, w, h]`` [4].

    pred_boxes [N, 4], gt_boxes [M, 4] (xyxy pixels) -> [N, M].
    """
    return torch.cdist(pred_boxes.float() / image_whwh, gt_boxes.float() / image_whwh, p=1)


def giou_cost(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """−GIoU of every prediction [N, 4] with every ground truth [M, 4] -> [N, M]."""
    return -box_ops.generalized_box_iou(pred_boxes.float(), gt_boxes.float())


class HungarianMatcher:
    """One-to-one assignment of predictions to ground truths per image (no gradient).

    Weights default to the paper's: 2 (classification), 5 (L1), 2 (GIoU); the focal
    ``alpha``/``gamma`` should be those of the classification loss.
    """

    def __init__(
        self,
        *,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if cls_weight == l1_weight == giou_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        image_whwh: Tensor,
    ) -> Tensor:
        """The matching cost of one image: logits [N, C], pred_boxes [N, 4], gt_labels [M],
        gt_boxes [M, 4], image_whwh [4] -> [N, M] (non-finite entries -> INVALID_COST)."""
        cost = (
            self.cls_weight
            * focal_class_cost(logits, gt_labels, alpha=self.focal_alpha, gamma=self.focal_gamma)
            + self.l1_weight * l1_box_cost(pred_boxes, gt_boxes, image_whwh)
            + self.giou_weight * giou_cost(pred_boxes, gt_boxes)
        )
        return torch.nan_to_num(cost, nan=INVALID_COST, posinf=INVALID_COST, neginf=INVALID_COST)

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        targets: list[dict[str, Any]],
        image_whwh: Tensor,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match a batch: logits [B, N, C], pred_boxes [B, N, 4], ``targets[b]["boxes"]``
        [M_b, 4] and ``["labels"]`` [M_b], image_whwh [B, 4].

        Returns per image the :func:`hungarian_assign` pairs ``(pred_idx, gt_idx)`` on the
        logits' device.
        """
        costs = [
            self.cost(logits[b], pred_boxes[b], t["labels"], t["boxes"], image_whwh[b])
            for b, t in enumerate(targets)
        ]
        # One device-to-host copy for the whole batch (the assignment runs on the CPU).
        sizes = [c.shape[1] for c in costs]
        flat = torch.cat([c.flatten() for c in costs]).cpu() if costs else torch.zeros(0)
        num_preds = logits.shape[1]
        matches = []
        for cost, m in zip(flat.split([num_preds * m for m in sizes]), sizes):
            pred_idx, gt_idx = hungarian_assign(cost.view(num_preds, m))
            matches.append((pred_idx.to(logits.device), gt_idx.to(logits.device)))
        return matches


def hungarian_assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of minimum total cost, cost [N, M] ->
    ``(pred_idx, gt_idx)``: two int64 CPU tensors of length ``min(N, M)``, ``pred_idx``
    ascending; row ``pred_idx[k]`` is matched to column ``gt_idx[k]``."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
