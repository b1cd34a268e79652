"""Anchor boxes for dense detectors (xyxy, absolute pixels of the padded input)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class AnchorGenerator:
    """``scales_per_octave x len(ratios)`` anchors at every cell of every level.

    Anchor size at level ``l`` is ``anchor_scale * 2**l * 2**(i / scales_per_octave)``;
    ratios are height / width. Anchors are ordered level, then row, column, then anchor type,
    which is the order the head's flattened outputs use.
    """

    def __init__(
        self,
        *,
        levels: list[int],
        anchor_scale: float,
        ratios: tuple[float, ...],
        scales_per_octave: int,
    ) -> None:
        self.levels = levels
        self.strides = [2**lvl for lvl in levels]
        self.cell_anchors = [
            self._cell_anchors(anchor_scale * s, ratios, scales_per_octave) for s in self.strides
        ]
        self.num_anchors = len(ratios) * scales_per_octave
        self._cache: dict[tuple[tuple[int, int], ...], tuple[Tensor, list[int]]] = {}

    @staticmethod
    def _cell_anchors(base: float, ratios: tuple[float, ...], per_octave: int) -> Tensor:
        boxes = []
        for octave in range(per_octave):
            size = base * 2 ** (octave / per_octave)
            for ratio in ratios:
                w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
                boxes.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(boxes, dtype=torch.float32)  # [A, 4]

    def sizes_per_level(self) -> list[list[float]]:
        """Per level, the side ``sqrt(w·h)`` of each of its anchors (a ratio keeps it)."""
        return [
            ((cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])).sqrt().tolist()
            for cell in self.cell_anchors
        ]

    def __call__(
        self, feature_sizes: list[tuple[int, int]], device: torch.device
    ) -> tuple[Tensor, list[int]]:
        """Anchors [sum_l H_l W_l A, 4] and the count per level."""
        key = tuple(feature_sizes)
        if key not in self._cache:
            per_level = []
            for (h, w), stride, cell in zip(feature_sizes, self.strides, self.cell_anchors):
                ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
                xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")
                centers = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
                per_level.append((centers + cell[None]).reshape(-1, 4))
            self._cache[key] = (torch.cat(per_level), [len(a) for a in per_level])
        anchors, counts = self._cache[key]
        return anchors.to(device), counts
