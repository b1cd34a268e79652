"""ATSS (Zhang et al. 2020): one square anchor per location (8 · stride), R-CNN deltas,
ATSS assignment (or IAC: ATSS is anchor-based) and, natively, a centerness branch.

Its parts (built by :func:`detectors.models.build_detector`): the shared
:class:`~detectors.models.head.DenseHead` with one anchor per cell and a learnable box
scale per level, an :class:`~detectors.models.anchors.AnchorGenerator` of
``ANCHOR_SCALE · stride``, a :class:`~detectors.models.box_coders.DeltaCoder` with
``DELTA_WEIGHTS``, and :class:`~detectors.assigners.ATSSAssigner`.
"""

from __future__ import annotations

from detectors.models.dense import DenseDetector

ANCHOR_SCALE = 8.0  # anchor side = 8 · stride (the paper's single octave scale)
DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / the (0.1, 0.1, 0.2, 0.2) target stds


class ATSS(DenseDetector):
    """Nothing beyond its parts: see :class:`~detectors.models.dense.DenseDetector`."""
