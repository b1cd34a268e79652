"""FoveaBox (Kong et al. 2020): points in each box's shrunk "fovea" at the levels that suit
its scale predict log side distances normalized by a per-level base edge (2 · stride, the
paper's 16-32-64-128-256 for strides 8-128). No quality branch natively.

Its parts (built by :func:`detectors.models.build_detector`): FCOS's head and cells, a
:class:`~detectors.models.box_coders.LogSideCoder` and
:class:`~detectors.assigners.FoveaAssigner`.
"""

from __future__ import annotations

from detectors.models.dense import DenseDetector

BASE_EDGE = 2.0  # base edge = BASE_EDGE · stride
TARGET_CLAMP = (1 / 16, 16.0)  # side distance / base edge is clamped here before the log


class FoveaBox(DenseDetector):
    """Nothing beyond its parts: see :class:`~detectors.models.dense.DenseDetector`."""
