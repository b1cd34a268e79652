"""The dense head every dense detector shares: two conv towers over each FPN level.

The classification tower ends in ``num_anchors · num_classes`` logits per cell; the box
tower in ``num_anchors · 4`` box outputs (what they mean is the detector's box coder's) and,
optionally, ``num_anchors`` quality logits (centerness or IoU, the FCOS paper's later and
better placement). Point heads (FCOS, ATSS, FoveaBox, PAA: one location per cell) learn a
scale per level for the box outputs, because the box conv is shared over levels; RetinaNet
does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm == "group":
            layers.append(nn.GroupNorm(min(32, channels // 4), channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Scale(nn.Module):
    """A learnable scalar per FPN level (the box branch is shared over levels)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


# Parameter names of checkpoints written before the head was shared (PointHead's centerness
# conv, RetinaNetHead's bbox_pred): they still load.
_RENAMED = {"centerness.": "quality.", "bbox_pred.": "box_reg."}


def _rename_old_parameters(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _RENAMED.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


class DenseHead(nn.Module):
    """Shared over levels: ``features`` list of [B, C, H_l, W_l] -> ``cls_logits``
    [B, N, num_classes], ``box_reg`` [B, N, 4] (raw) and ``quality`` [B, N] logits (``None``
    without the branch); N = Σ H_l W_l · num_anchors, ordered level, row, column, anchor."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int,
        norm: str,
        prior_prob: float,
        quality: bool,
        level_scales: int,
    ) -> None:
        """``level_scales``: levels that each get a learnable box scale (0: none)."""
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs, norm)
        self.reg_tower = _tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.quality = nn.Conv2d(in_channels, num_anchors, 3, padding=1) if quality else None
        self.scales = nn.ModuleList(Scale() for _ in range(level_scales)) if level_scales else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]
        # Start every location at foreground probability `prior_prob` (focal loss stability).
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))  # type: ignore[arg-type]
        self.register_load_state_dict_pre_hook(_rename_old_parameters)

    @staticmethod
    def _flatten(x: Tensor, per_anchor: int) -> Tensor:
        b, _, h, w = x.shape
        # [B, A*K, H, W] -> [B, H, W, A, K] -> [B, H*W*A, K]
        return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        logits, boxes, quality = [], [], []
        for level, feature in enumerate(features):
            reg = self.reg_tower(feature)
            logits.append(
                self._flatten(self.cls_logits(self.cls_tower(feature)), self.num_classes)
            )
            box = self.box_reg(reg)
            if self.scales is not None:
                box = self.scales[level](box)
            boxes.append(self._flatten(box, 4))
            if self.quality is not None:
                quality.append(self._flatten(self.quality(reg), 1))
        q = torch.cat(quality, dim=1).squeeze(2) if quality else None
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1), q
