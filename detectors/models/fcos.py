"""FCOS (Tian et al. 2019): one point per feature-map cell, side distances, centerness.

Head -> model, as torchvision lays it out. :class:`PointHead` and :class:`FCOS` are also
the base of ATSS (one anchor per point, ATSS assignment) and FoveaBox (no centerness, log
distances): both override only :meth:`FCOS.head_outputs` and :meth:`FCOS.box_loss`.
Assignment goes through the :class:`~detectors.assigners.Assigner` slot; points are passed
to it as stride-sized cells (``point ± stride / 2``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors import box_ops
from detectors.losses.regression import REGRESSION_LOSSES
from detectors.models.anchors import AnchorGenerator
from detectors.models.dense import (
    DenseDetector,
    Positives,
    Targets,
    global_mean,
)
from detectors.models.retinanet import _tower


class Scale(nn.Module):
    """A learnable scalar per FPN level (the box branch is shared over levels)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class PointHead(nn.Module):
    """Shared over levels: ``features`` list of [B, C, H_l, W_l] -> ``cls_logits``
    [B, N, num_classes], ``box_reg`` [B, N, 4] (scaled per level, raw) and
    ``centerness`` [B, N] logits (``None`` without the branch); N = Σ H_l W_l."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_convs: int,
        norm: str,
        prior_prob: float,
        centerness: bool,
    ) -> None:
        super().__init__()
        self.cls_tower = _tower(in_channels, num_convs, norm)
        self.reg_tower = _tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(in_channels, 4, 3, padding=1)
        # On the regression tower (the FCOS paper's later, better placement; ATSS's too).
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1) if centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))  # type: ignore[arg-type]

    @staticmethod
    def _flatten(x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)  # [B, K, H, W] -> [B, H*W, K]

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        logits, boxes, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            reg = self.reg_tower(feature)
            logits.append(self._flatten(self.cls_logits(self.cls_tower(feature))))
            boxes.append(self._flatten(scale(self.box_reg(reg))))
            if self.centerness is not None:
                centerness.append(self._flatten(self.centerness(reg)))
        ctr = torch.cat(centerness, dim=1).squeeze(2) if centerness else None
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1), ctr


class FCOS(DenseDetector):
    """Points with ``(l, t, r, b) = relu(box_reg) · stride`` and an optional centerness
    branch: trained with BCE on the positives, it multiplies the score at test time
    (``sqrt(p · centerness)``, torchvision's form)."""

    def __init__(
        self,
        *,
        head: PointHead,
        anchor_generator: AnchorGenerator,
        reg_loss: str,
        reg_weight: float,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.head = head
        self.anchor_generator = anchor_generator  # stride-sized cells (or ATSS's anchors)
        self.reg_loss = REGRESSION_LOSSES[reg_loss]
        self.reg_weight = reg_weight

    def head_outputs(self, features: list[Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        cls_logits, box_reg, centerness = self.head(features)
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        cells, num_per_level = self.anchor_generator(sizes, cls_logits.device)
        points, strides = box_ops.box_centers(cells), cells[:, 2] - cells[:, 0]  # [N, 2], [N]
        distances = F.relu(box_reg.float()) * strides[None, :, None]  # [B, N, 4] pixels
        b, n, _ = distances.shape
        pred_boxes = box_ops.decode_ltrb(points.repeat(b, 1), distances.reshape(-1, 4))
        return {
            "cls_logits": cls_logits,
            "box_reg": box_reg,
            "centerness": centerness,
            "pred_boxes": pred_boxes.view(b, n, 4),
            "anchors": cells,
            "num_per_level": num_per_level,
        }

    def box_loss(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        """Per positive: the regression loss on stride-normalized side distances [P]."""
        cells = outputs["anchors"][positive.nonzero(as_tuple=True)[1]]  # [P, 4]
        points, strides = box_ops.box_centers(cells), cells[:, 2:3] - cells[:, 0:1]
        target = box_ops.encode_ltrb(points, pos.gt_boxes) / strides  # [P, 4]
        pred = F.relu(outputs["box_reg"][positive].float())
        return self.reg_loss(pred, target, pred_boxes=pos.pred_boxes, gt_boxes=pos.gt_boxes)

    def regression_loss(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        centerness: Tensor | None = outputs["centerness"]
        if len(pos.gt_boxes) == 0:  # keep every branch in the graph (DDP needs its gradients)
            zero = outputs["box_reg"].sum() * 0
            if centerness is not None:
                outputs["centerness_loss_sum"] = centerness.sum() * 0
            return zero
        if centerness is not None:
            # Targets from the anchor/point centres: 1 at the box centre, 0 at its border.
            centres = box_ops.box_centers(outputs["anchors"][positive.nonzero(as_tuple=True)[1]])
            target = box_ops.ltrb_centerness(box_ops.encode_ltrb(centres, pos.gt_boxes))
            outputs["centerness_loss_sum"] = F.binary_cross_entropy_with_logits(
                centerness[positive].float(), target, reduction="sum"
            )
        return self.reg_weight * self.box_loss(outputs, positive, pos).sum()

    def losses(
        self, outputs: dict[str, Any], targets: Targets
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses, stats = super().losses(outputs, targets)
        if "centerness_loss_sum" in outputs:  # written by regression_loss above
            num_pos = global_mean(stats["num_pos"]).clamp(min=1.0)
            losses["loss_centerness"] = outputs["centerness_loss_sum"] / num_pos
        return losses, stats

    @torch.no_grad()
    def postprocess(
        self, outputs: dict[str, Any], targets: Targets | None
    ) -> list[dict[str, Tensor]]:
        centerness: Tensor | None = outputs["centerness"]
        if centerness is not None:  # rank by sqrt(p · centerness), through the base's sigmoid
            scores = (outputs["cls_logits"].sigmoid() * centerness.sigmoid()[..., None]).sqrt()
            outputs = outputs | {"cls_logits": torch.logit(scores, eps=1e-6)}
        return super().postprocess(outputs, targets)
