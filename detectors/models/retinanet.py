"""RetinaNet (Lin et al. 2017): anchors of several scales and ratios at every FPN level,
focal loss, R-CNN box deltas, max-IoU assignment.

Its parts (built by :func:`detectors.models.build_detector`): the shared
:class:`~detectors.models.head.DenseHead` with ``scales_per_octave × len(ratios)`` anchors
per cell and no per-level box scale, an :class:`~detectors.models.anchors.AnchorGenerator`
of ``model.anchor_scale · stride``, a :class:`~detectors.models.box_coders.DeltaCoder`, and
the max-IoU (or IAC) assigner. A quality branch makes it IoU-aware RetinaNet (Wu et al.).
"""

from __future__ import annotations

from detectors.models.dense import DenseDetector


class RetinaNet(DenseDetector):
    """Nothing beyond its parts: see :class:`~detectors.models.dense.DenseDetector`."""
