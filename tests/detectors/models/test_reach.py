"""A detector's reach comes from the locations its builder gives it, with hand-worked ranges."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.config import ExperimentConfig, load_config
from detectors.models import DETECTORS, build_detector
from detectors.models.reach import detector_reach, location_generator


def _cfg(name: str, **overrides: object) -> ExperimentConfig:
    base = {"model.name": name, "model.min_level": 3, "model.max_level": 5}
    return load_config("smoke", overrides=base | overrides)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_the_locations_are_the_built_detectors_own(name: str) -> None:
    cfg = _cfg(name)
    model = build_detector(cfg, num_classes=2)
    generator = location_generator(cfg)
    built = getattr(model, "anchor_generator", None)
    if built is None:  # Sparse R-CNN
        assert generator is None and detector_reach(cfg) is None
        return
    assert generator is not None and generator.strides == built.strides
    for ours, theirs in zip(generator.cell_anchors, built.cell_anchors):
        assert torch.equal(ours, theirs)


def test_hand_worked_reaches() -> None:
    root2 = math.sqrt(2)
    # RetinaNet, scale 4, 3 octaves, P3-P5: anchors 32 .. 4 * 32 * 2^(2/3) = 203.2 px; a box
    # within [32 / sqrt2, 203.2 * sqrt2] has an anchor of IoU >= 0.5 when centred.
    reach = detector_reach(_cfg("retinanet", **{"model.anchor_scale": 4.0}))
    assert reach is not None and not reach.open_above
    assert reach.low == pytest.approx(32 / root2, rel=1e-5)
    assert reach.high == pytest.approx(4 * 32 * 2 ** (2 / 3) * root2, rel=1e-5)
    assert reach.locations.startswith("anchors 32-203 px on P3-P5")
    # ... with fg_iou 0.7 the factor is sqrt(0.7)
    strict = detector_reach(_cfg("retinanet", **{"assign.fg_iou": 0.7, "assign.bg_iou": 0.4}))
    assert strict is not None and strict.low == pytest.approx(32 * math.sqrt(0.7), rel=1e-5)
    # ATSS: one 8 * stride anchor (64 .. 256 px), centred inside the box: from one stride
    atss = detector_reach(_cfg("atss"))
    assert atss is not None and atss.open_above
    assert (atss.low, atss.high) == pytest.approx((8.0, 256 * root2))
    # FCOS: a box under one stride (8) may hold no point; the top level reaches 2 * 8 * 32
    fcos = detector_reach(_cfg("fcos"))
    assert fcos is not None and (fcos.low, fcos.high, fcos.open_above) == (8.0, 512.0, True)
    # FoveaBox, sigma 0.4: the fovea of a box under 8 / 0.4 = 20 px may hold no point
    fovea = detector_reach(_cfg("foveabox"))
    assert fovea is not None and (fovea.low, fovea.high) == pytest.approx((20.0, 256.0))
