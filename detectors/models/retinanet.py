"""RetinaNet (Lin et al. 2017): anchors at every FPN level, focal loss, box deltas.

Head -> model -> builder, as torchvision lays it out. Assignment, losses and NMS are the
pluggable slots of :mod:`detectors.assigners`, :mod:`detectors.losses` and
:mod:`detectors.postprocess`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from detectors import box_ops
from detectors.losses.regression import REGRESSION_LOSSES
from detectors.models.anchors import AnchorGenerator
from detectors.models.dense import DenseDetector, Positives


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm == "group":
            layers.append(nn.GroupNorm(min(32, channels // 4), channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Shared over levels: ``features`` list of [B, C, H_l, W_l] ->
    ``cls_logits`` [B, N, num_classes] and ``bbox_deltas`` [B, N, 4], N = Σ H_l W_l A."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int,
        norm: str,
        prior_prob: float,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs, norm)
        self.reg_tower = _tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for module in [*self.cls_tower, *self.reg_tower, self.cls_logits, self.bbox_pred]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]
        # Start every anchor at foreground probability `prior_prob` (focal loss stability).
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))  # type: ignore[arg-type]

    @staticmethod
    def _flatten(x: Tensor, per_anchor: int) -> Tensor:
        b, _, h, w = x.shape
        # [B, A*K, H, W] -> [B, H, W, A, K] -> [B, H*W*A, K]
        return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        logits = [
            self._flatten(self.cls_logits(self.cls_tower(f)), self.num_classes) for f in features
        ]
        deltas = [self._flatten(self.bbox_pred(self.reg_tower(f)), 4) for f in features]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RetinaNet(DenseDetector):
    def __init__(
        self,
        *,
        head: RetinaNetHead,
        anchor_generator: AnchorGenerator,
        reg_loss: str,
        reg_weight: float,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.head = head
        self.anchor_generator = anchor_generator
        self.reg_loss = REGRESSION_LOSSES[reg_loss]
        self.reg_weight = reg_weight

    def head_outputs(self, features: list[Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        cls_logits, deltas = self.head(features)
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors, num_per_level = self.anchor_generator(sizes, cls_logits.device)
        b, n, _ = deltas.shape
        pred_boxes = box_ops.decode_deltas(
            deltas.reshape(-1, 4).float(), anchors.repeat(b, 1)
        ).view(b, n, 4)
        return {
            "cls_logits": cls_logits,
            "bbox_deltas": deltas,
            "pred_boxes": pred_boxes,
            "anchors": anchors,
            "num_per_level": num_per_level,
        }

    def regression_loss(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        if len(pos.gt_boxes) == 0:
            return outputs["bbox_deltas"].sum() * 0
        anchors = outputs["anchors"][positive.nonzero(as_tuple=True)[1]]
        target_deltas = box_ops.encode_deltas(anchors, pos.gt_boxes)
        pred_deltas = outputs["bbox_deltas"][positive].float()
        per_pos = self.reg_loss(
            pred_deltas, target_deltas, pred_boxes=pos.pred_boxes, gt_boxes=pos.gt_boxes
        )
        return self.reg_weight * per_pos.sum()
