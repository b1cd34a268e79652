"""Which box sides a detector's locations are made for: its :class:`Reach`, from the anchor
generator and assigner its builder uses (``tests/detectors/models/test_reach.py`` checks
that the generators here are the built detectors' own).

- RetinaNet (IoU thresholds): a box whose side is within ``[smallest anchor · sqrt(t),
  largest anchor / sqrt(t)]`` has an anchor of its shape that overlaps it with IoU >=
  ``t = assign.fg_iou`` when centred on it (IoU of two concentric squares is the squared
  ratio of their sides).
- ATSS and PAA (one 8·stride anchor a cell) set their IoU threshold per box from its
  candidates, and take only anchors centred inside it: a box under one stride of the finest
  level may hold none; above, the range runs to the largest anchor / sqrt(t), and larger
  boxes still get that level's best anchors (open above).
- Point heads: a box smaller than the finest stride (FCOS) or than the finest stride over
  the fovea's ``sigma`` (FoveaBox) may hold no point; larger boxes than the coarsest
  level's range still go to that level (open above).
- Sparse R-CNN has no anchors or points: no reach.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from detectors.assigners import FCOSAssigner, FoveaAssigner
from detectors.config import ExperimentConfig
from detectors.data.geometry import Reach
from detectors.models.anchors import AnchorGenerator
from detectors.models.atss import ANCHOR_SCALE as ATSS_ANCHOR_SCALE


def location_generator(cfg: ExperimentConfig) -> AnchorGenerator | None:
    """The anchors (point heads: the stride-sized cells) ``build_detector`` gives the model."""
    m = cfg.model
    levels = list(range(m.min_level, m.max_level + 1))
    if m.name == "retinanet":
        return AnchorGenerator(
            levels=levels,
            anchor_scale=m.anchor_scale,
            ratios=m.anchor_ratios,
            scales_per_octave=m.scales_per_octave,
        )
    scale = LOCATION_SCALES.get(m.name)
    if scale is None:
        return None
    return AnchorGenerator(levels=levels, anchor_scale=scale, ratios=(1.0,), scales_per_octave=1)


# model.name -> the anchor scale of the single square location per cell (as DETECTORS
# builds them); RetinaNet takes model.anchor_scale, ratios and octaves instead.
LOCATION_SCALES: dict[str, float] = {
    "atss": ATSS_ANCHOR_SCALE,
    "paa": ATSS_ANCHOR_SCALE,
    "fcos": 1.0,
    "foveabox": 1.0,
}


def _levels(cfg: ExperimentConfig) -> str:
    return f"P{cfg.model.min_level}-P{cfg.model.max_level}"


def _anchor_reach(cfg: ExperimentConfig, generator: AnchorGenerator) -> Reach:
    sizes = [s for level in generator.sizes_per_level() for s in level]
    root_t = math.sqrt(cfg.assign.fg_iou)
    return Reach(
        low=min(sizes) * root_t,
        high=max(sizes) / root_t,
        open_above=False,
        locations=f"anchors {min(sizes):.0f}-{max(sizes):.0f} px on {_levels(cfg)}, "
        f"IoU {cfg.assign.fg_iou:g} when centred",
    )


def _adaptive_reach(cfg: ExperimentConfig, generator: AnchorGenerator) -> Reach:
    sizes = [s for level in generator.sizes_per_level() for s in level]
    return Reach(
        low=float(generator.strides[0]),
        high=max(sizes) / math.sqrt(cfg.assign.fg_iou),
        open_above=True,
        locations=f"anchors {min(sizes):.0f}-{max(sizes):.0f} px on {_levels(cfg)}, "
        "centred in the box, IoU threshold per box",
    )


def _fcos_reach(cfg: ExperimentConfig, generator: AnchorGenerator) -> Reach:
    strides = generator.strides
    upper = FCOSAssigner(center_sampling_radius=cfg.model.center_sampling_radius).size_upper
    return Reach(
        low=float(strides[0]),
        high=2 * upper * strides[-1],  # max(l, t, r, b) <= upper·stride: half a centred side
        open_above=True,
        locations=f"points every {strides[0]}-{strides[-1]} px on {_levels(cfg)}",
    )


def _fovea_reach(cfg: ExperimentConfig, generator: AnchorGenerator) -> Reach:
    strides = generator.strides
    assigner = FoveaAssigner(sigma=cfg.model.fovea_sigma)
    return Reach(
        low=strides[0] / assigner.sigma,
        high=assigner.scale_upper * strides[-1],
        open_above=True,
        locations=f"points every {strides[0]}-{strides[-1]} px on {_levels(cfg)}, "
        f"fovea {assigner.sigma:g}",
    )


REACHES: dict[str, Callable[[ExperimentConfig, AnchorGenerator], Reach]] = {
    "retinanet": _anchor_reach,
    "atss": _adaptive_reach,
    "paa": _adaptive_reach,
    "fcos": _fcos_reach,
    "foveabox": _fovea_reach,
}

# Detectors whose anchor sizes follow model.anchor_scale (the geometry fit sets it too).
SCALED_ANCHORS = ("retinanet",)


def detector_reach(cfg: ExperimentConfig) -> Reach | None:
    """The reach of ``cfg``'s detector at its levels; None for Sparse R-CNN."""
    generator = location_generator(cfg)
    if generator is None:
        return None
    return REACHES[cfg.model.name](cfg, generator)


def reach_with(cfg: ExperimentConfig, min_level: int, max_level: int, scale: float) -> Reach:
    """The reach ``cfg``'s detector would have on levels ``min_level..max_level`` (and, for
    RetinaNet, anchor scale ``scale``): what the geometry fit tries."""
    model = dataclasses.replace(
        cfg.model, min_level=min_level, max_level=max_level, anchor_scale=scale
    )
    reach = detector_reach(dataclasses.replace(cfg, model=model))
    assert reach is not None  # only asked for detectors with locations
    return reach
