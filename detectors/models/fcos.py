"""FCOS (Tian et al. 2019): one point per feature-map cell, side distances in strides,
centre sampling and, natively, a centerness branch.

Its parts (built by :func:`detectors.models.build_detector`): the shared
:class:`~detectors.models.head.DenseHead` with one location per cell and a learnable box
scale per level; stride-sized cells (``point ± stride / 2``, an
:class:`~detectors.models.anchors.AnchorGenerator` of scale 1) as the locations the
assigner labels; a :class:`~detectors.models.box_coders.SideCoder`; and
:class:`~detectors.assigners.FCOSAssigner`. The centerness score at test time is
``sqrt(p · centerness)`` (torchvision's form).
"""

from __future__ import annotations

from detectors.models.dense import DenseDetector

CELL_SCALE = 1.0  # the cell of a point is one stride wide


class FCOS(DenseDetector):
    """Nothing beyond its parts: see :class:`~detectors.models.dense.DenseDetector`."""
