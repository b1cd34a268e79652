"""Box-size statistics, reach coverage and the fits, against hand-worked numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detectors.data.base import ImageRecord
from detectors.data.geometry import (
    BoxSizes,
    GeometryReport,
    Reach,
    class_stats,
    fit_image_size,
    fit_iterations,
    fit_levels,
    outside,
)


def _record(width: int, height: int, boxes: list[list[float]], labels: list[int]) -> ImageRecord:
    return ImageRecord(
        image_id=1,
        image_path=Path("x.jpg"),
        ann_path=Path("x.xml"),
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        ignore=np.zeros(len(boxes), bool),
    )


def test_sizes_follow_the_resize_of_the_longer_side() -> None:
    # A 200 x 100 image resized to 100 px: every box halves. Side = sqrt(w h), aspect h / w.
    record = _record(200, 100, [[0, 0, 20, 20], [0, 0, 40, 10], [0, 0, 8, 2]], [0, 0, 1])
    record.ignore[2] = True  # a crowd / difficult box is not a training target
    sizes = BoxSizes.from_records([record], ["a", "b"])
    assert len(sizes) == 2 and sizes.num_images == 1
    assert sizes.sides(100).tolist() == [10.0, 10.0]
    assert sizes.aspects().tolist() == [1.0, 0.25]


def test_class_stats_percentiles() -> None:
    # Sides 10, 20, ..., 50 at 100 px (a 100 x 100 image): p5 = 10 + 0.05 * 4 * 10 = 12.
    boxes = [[0, 0, s, s] for s in (10, 20, 30, 40, 50)] + [[0, 0, 10, 40]]
    sizes = BoxSizes.from_records([_record(100, 100, boxes, [0] * 5 + [1])], ["a", "b", "c"])
    a, b, c = class_stats(sizes, 100)
    assert (a.count, a.side) == (5, pytest.approx((12.0, 30.0, 48.0)))
    assert a.aspect == pytest.approx((1.0, 1.0, 1.0))
    assert (b.count, b.side, b.aspect) == (
        1,
        pytest.approx((20.0,) * 3),
        pytest.approx((4.0,) * 3),
    )
    assert c.count == 0 and all(math.isnan(v) for v in c.side)


def test_outside_a_reach() -> None:
    sides = np.array([10.0, 20.0, 300.0])
    below, above = outside(sides, Reach(22.6, 287.4, open_above=False, locations=""))
    assert below.tolist() == [True, True, False] and above.tolist() == [False, False, True]
    _, above = outside(sides, Reach(22.6, 287.4, open_above=True, locations=""))
    assert not above.any()  # point heads: the coarsest level takes larger boxes


def test_fit_image_size() -> None:
    # 400 x 300 images, boxes of side 20: at S px they are 20 S / 400; 12 px needs S >= 240.
    sizes = BoxSizes.from_records([_record(400, 300, [[0, 0, 20, 20]] * 3, [0] * 3)], ["a"])
    assert fit_image_size(sizes, min_box_side=12, low=160, high=384) == 256  # 240 -> x32
    assert fit_image_size(sizes, min_box_side=12, low=160, high=224) == 224  # the cap
    assert fit_image_size(sizes, min_box_side=2, low=160, high=384) == 160  # the floor
    empty = BoxSizes.from_records([], ["a"])
    assert fit_image_size(empty, min_box_side=12, low=150, high=384) == 160


def test_fit_iterations() -> None:
    assert fit_iterations(205, batch_size=8, image_size=256, epochs=12, budget_mpix=0) == 308
    # 100 Mpix of 8 x 256^2 batches: 190 iterations
    assert fit_iterations(205, batch_size=8, image_size=256, epochs=12, budget_mpix=100) == 190


def _square_anchors(min_level: int, max_level: int, scale: float) -> Reach:
    """One square anchor of scale · stride per level, IoU 0.5: [a_min / sqrt2, a_max sqrt2]."""
    return Reach(
        scale * 2**min_level / math.sqrt(2), scale * 2**max_level * math.sqrt(2), False, ""
    )


def test_fit_levels_with_the_anchor_scale() -> None:
    # Every box 16 px: from the coarsest level down, the first scale 16 / (2^L / sqrt 2) at
    # least 2.5 is at L = 3 (2.83; L = 4 would take 1.41). The top stays at 5 (the trunk's).
    sides, labels = np.full(10, 16.0), np.zeros(10, np.int64)
    fit = fit_levels(sides, labels, _square_anchors, fit_scale=True, anchor_scale=4.0)
    assert (fit.min_level, fit.max_level) == (3, 5)
    assert fit.anchor_scale == pytest.approx(16 * math.sqrt(2) / 8, abs=1e-3)
    assert fit.notes == []
    # 400 px boxes too: the top goes up until 2.83 * 2^L * sqrt 2 >= 400, L = 7 (6 gives 256)
    sides = np.array([16.0] * 10 + [400.0] * 10)
    labels = np.array([0] * 10 + [1] * 10)
    fit = fit_levels(sides, labels, _square_anchors, fit_scale=True, anchor_scale=4.0)
    assert (fit.min_level, fit.max_level, fit.notes) == (3, 7, [])
    # 1000 px: out of reach even at level 7 (512 px), and said so
    sides[10:] = 1000.0
    fit = fit_levels(sides, labels, _square_anchors, fit_scale=True, anchor_scale=4.0)
    assert (fit.max_level, fit.notes) == (7, ["boxes above 512.0 px"])


def test_fit_levels_without_the_anchor_scale_and_out_of_reach() -> None:
    sides, labels = np.full(5, 3.0), np.zeros(5, np.int64)  # 3 px: below any level at scale 4
    fit = fit_levels(sides, labels, _square_anchors, fit_scale=False, anchor_scale=4.0)
    assert (fit.min_level, fit.max_level, fit.anchor_scale) == (2, 5, None)
    assert fit.notes == ["boxes below 11.3 px"]  # 4 * 4 / sqrt 2
    same = fit_levels(sides, labels, _square_anchors, fit_scale=False, anchor_scale=4.0)
    assert same == fit  # deterministic


def test_report_warns_only_beyond_the_fits_tails() -> None:
    sizes = BoxSizes.from_records(
        [_record(100, 100, [[0, 0, 5, 5]] + [[0, 0, 50, 50]] * 99, [0] * 100)], ["a"]
    )
    stats = class_stats(sizes, 100)
    quiet = GeometryReport(
        100, "retinanet", stats, Reach(10, 200, False, "x"), 100, {"a": 1}, {"a": 0}, ""
    )
    assert not quiet.worth_a_warning and "the tails" in quiet.format()
    loud = GeometryReport(
        100, "retinanet", stats, Reach(10, 200, False, "x"), 100, {"a": 3}, {"a": 0}, "F"
    )
    assert loud.worth_a_warning
    assert (
        "warning: 3 of 100 boxes are out of the detector's reach (3 smaller than 10.0 px); fix: F"
        in loud.format()
    )
