"""Box coders: how a dense head's four box outputs per location become a box, and back.

A dense detector predicts, at every location (an anchor box, or a stride-sized cell around
a point), four raw numbers ``box_reg``. Its coder says what they mean:

- ``decode(box_reg [B, N, 4], anchors [N, 4]) -> boxes [B, N, 4]`` (xyxy pixels, float32);
- ``encode(anchors [P, 4], gt_boxes [P, 4]) -> targets [P, 4]``: what a positive's outputs
  should be to predict its ground truth exactly;
- ``regression(box_reg [P, 4]) -> [P, 4]``: the positives' outputs as the box loss compares
  them with ``encode``'s targets.

RetinaNet and ATSS predict R-CNN deltas (:class:`DeltaCoder`), FCOS side distances in
strides (:class:`SideCoder`), FoveaBox log side distances over a base edge
(:class:`LogSideCoder`). Pure tensor math over :mod:`detectors.box_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors import box_ops


class BoxCoder(Protocol):
    def decode(self, box_reg: Tensor, anchors: Tensor) -> Tensor: ...

    def encode(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor: ...

    def regression(self, box_reg: Tensor) -> Tensor: ...


@dataclass(frozen=True, kw_only=True)
class DeltaCoder:
    """R-CNN deltas ``(dx, dy, dw, dh)`` of an anchor box, scaled by ``weights``."""

    weights: tuple[float, float, float, float] = (1, 1, 1, 1)  # 1 / the target stds

    def decode(self, box_reg: Tensor, anchors: Tensor) -> Tensor:
        b, n, _ = box_reg.shape
        flat = box_ops.decode_deltas(
            box_reg.reshape(-1, 4).float(), anchors.repeat(b, 1), self.weights
        )
        return flat.view(b, n, 4)

    def encode(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return box_ops.encode_deltas(anchors, gt_boxes, self.weights)

    def regression(self, box_reg: Tensor) -> Tensor:
        return box_reg.float()


def _points_and_strides(cells: Tensor) -> tuple[Tensor, Tensor]:
    """Centres [N, 2] and sides [N, 1] of stride-sized square cells [N, 4]."""
    return box_ops.box_centers(cells), cells[:, 2:3] - cells[:, 0:1]


@dataclass(frozen=True, kw_only=True)
class SideCoder:
    """FCOS: distances ``(l, t, r, b)`` from the cell's centre to the box sides, in strides;
    the outputs pass a ReLU (a distance is never negative)."""

    def decode(self, box_reg: Tensor, anchors: Tensor) -> Tensor:
        points, strides = box_ops.box_centers(anchors), anchors[:, 2] - anchors[:, 0]
        distances = F.relu(box_reg.float()) * strides[None, :, None]  # [B, N, 4] pixels
        b, n, _ = distances.shape
        return box_ops.decode_ltrb(points.repeat(b, 1), distances.reshape(-1, 4)).view(b, n, 4)

    def encode(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        points, strides = _points_and_strides(anchors)
        return box_ops.encode_ltrb(points, gt_boxes) / strides

    def regression(self, box_reg: Tensor) -> Tensor:
        return F.relu(box_reg.float())


@dataclass(frozen=True, kw_only=True)
class LogSideCoder:
    """FoveaBox: ``log(side distance / base edge)`` with base edge ``base_edge · stride``
    (the paper's 16-32-64-128-256 for strides 8-128); targets clamped to ``target_clamp``
    before the log."""

    base_edge: float = 2.0
    target_clamp: tuple[float, float] = (1 / 16, 16.0)

    def decode(self, box_reg: Tensor, anchors: Tensor) -> Tensor:
        points, strides = box_ops.box_centers(anchors), anchors[:, 2] - anchors[:, 0]
        log_dist = box_reg.float().clamp(max=box_ops.BBOX_XFORM_CLIP)  # [B, N, 4]
        distances = log_dist.exp() * (self.base_edge * strides)[None, :, None]
        b, n, _ = distances.shape
        return box_ops.decode_ltrb(points.repeat(b, 1), distances.reshape(-1, 4)).view(b, n, 4)

    def encode(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        points, strides = _points_and_strides(anchors)
        ratio = box_ops.encode_ltrb(points, gt_boxes) / (self.base_edge * strides)
        return torch.log(ratio.clamp(*self.target_clamp))

    def regression(self, box_reg: Tensor) -> Tensor:
        return box_reg.float()
