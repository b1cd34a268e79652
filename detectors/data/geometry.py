"""Box sizes at the model's input size, and how they sit against a detector's reach.

Pure functions on arrays. A box's ``side`` is its geometric-mean side ``sqrt(w·h)`` and its
``aspect`` is ``h / w`` (the convention of ``model.anchor_ratios``), both measured after the
resize of the transforms (:func:`~detectors.data.transforms.resize_scale`: the longer image
side becomes ``image_size``). A detector's :class:`Reach` is the range of sides its
locations can be assigned; the fits below choose sizes and levels from the sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from detectors.data.base import ImageRecord
from detectors.data.transforms import SIZE_DIVISIBLE, resize_scale

PERCENTILES = (5.0, 50.0, 95.0)  # reported per class
FIT_QUANTILES = (0.01, 0.99)  # the geometry fit reaches every class's 1st-99th percentile
# FPN levels a fit may choose: the finest from stride 4; the coarsest from 5 (every trunk
# ends there, and the FPN reads it) to 7 (P6, P7 on top of it).
LEVEL_BOUNDS = (2, 7)
MIN_TOP_LEVEL = 5
MIN_ANCHOR_SCALE = 2.5  # a fitted anchor is at least this many strides (see fit_levels)


@dataclass(frozen=True)
class BoxSizes:
    """Every training box of a dataset, in ORIGINAL pixels: [N] arrays, one per box."""

    widths: np.ndarray  # float64 [N]
    heights: np.ndarray  # float64 [N]
    labels: np.ndarray  # int64 [N], into ``classes``
    to_input: np.ndarray  # float64 [N]: the resize factor of the box's image per input pixel
    classes: tuple[str, ...]
    num_images: int

    @staticmethod
    def from_records(records: Sequence[ImageRecord], classes: Sequence[str]) -> BoxSizes:
        """The training targets of ``records`` (boxes marked ``ignore`` left out)."""
        widths, heights, labels, factors = [], [], [], []
        for record in records:
            keep = ~record.ignore
            boxes = record.boxes[keep].astype(np.float64)
            widths.append(boxes[:, 2] - boxes[:, 0])
            heights.append(boxes[:, 3] - boxes[:, 1])
            labels.append(record.labels[keep])
            # resize_scale(h, w, image_size=1): the factor per unit of image_size
            factors.append(
                np.full(len(boxes), resize_scale(record.height, record.width, image_size=1))
            )

        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return BoxSizes(
            widths=cat(widths, np.float64),
            heights=cat(heights, np.float64),
            labels=cat(labels, np.int64),
            to_input=cat(factors, np.float64),
            classes=tuple(classes),
            num_images=len(records),
        )

    def __len__(self) -> int:
        return len(self.widths)

    def sides(self, image_size: float) -> np.ndarray:
        """``sqrt(w·h)`` of every box at input size ``image_size`` -> [N]."""
        return np.sqrt(self.widths * self.heights) * self.to_input * image_size

    def aspects(self) -> np.ndarray:
        """``h / w`` of every box (a resize keeps it) -> [N]."""
        return self.heights / self.widths


@dataclass(frozen=True)
class ClassStats:
    name: str
    count: int
    side: tuple[float, ...]  # PERCENTILES of the side at the input size (NaN: no boxes)
    aspect: tuple[float, ...]  # PERCENTILES of h / w


def class_stats(sizes: BoxSizes, image_size: int) -> list[ClassStats]:
    """Per class: count, 5th/50th/95th percentile of the box side and aspect."""
    sides, aspects = sizes.sides(image_size), sizes.aspects()
    out = []
    for label, name in enumerate(sizes.classes):
        mask = sizes.labels == label
        count = int(mask.sum())
        nan = (math.nan,) * len(PERCENTILES)
        out.append(
            ClassStats(
                name=name,
                count=count,
                side=tuple(np.percentile(sides[mask], PERCENTILES)) if count else nan,
                aspect=tuple(np.percentile(aspects[mask], PERCENTILES)) if count else nan,
            )
        )
    return out


def class_quantile(sides: np.ndarray, labels: np.ndarray, q: float, *, low: bool) -> float:
    """The smallest (``low``) or largest per-class ``q`` quantile of ``sides`` (classes with
    boxes only; NaN if there are none)."""
    values = [float(np.quantile(sides[labels == c], q)) for c in np.unique(labels)]
    if not values:
        return math.nan
    return min(values) if low else max(values)


@dataclass(frozen=True)
class Reach:
    """The box sides (``sqrt(w·h)``, input pixels) a detector's locations are made for.

    ``high`` is the coarsest level's own range; with ``open_above`` (point heads) larger
    boxes still go to that level, so only ``low`` is a hard limit."""

    low: float
    high: float
    open_above: bool
    locations: str  # what the locations are, for messages ("anchors 20-127 px on P3-P5")


def outside(sides: np.ndarray, reach: Reach) -> tuple[np.ndarray, np.ndarray]:
    """``(below, above)`` [N] bool: boxes smaller than the reach, larger than it (never
    for an open-above reach)."""
    below = sides < reach.low
    above = np.zeros_like(below) if reach.open_above else sides > reach.high
    return below, above


# ------------------------------------------------------------------------------- fits
def fit_image_size(sizes: BoxSizes, *, min_box_side: float, low: int, high: int) -> int:
    """The smallest multiple of 32 (the batch padding) in ``[low, high]`` at which every
    class's 5th-percentile box side is at least ``min_box_side`` pixels; ``high`` when even
    that is not enough, ``low`` when the boxes are large (or there are none)."""
    per_unit = sizes.sides(1.0)  # sides scale linearly with the input size
    p5 = class_quantile(per_unit, sizes.labels, PERCENTILES[0] / 100, low=True)
    low_step = math.ceil(low / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    if not (p5 > 0):  # no boxes (NaN), or a degenerate set
        return min(low_step, high)
    needed = math.ceil(min_box_side / p5 / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    return int(min(max(needed, low_step), high))


@dataclass(frozen=True)
class LevelFit:
    min_level: int
    max_level: int
    anchor_scale: float | None  # None: the detector's anchors do not take model.anchor_scale
    lo: float  # the sides the fit reaches: smallest per-class 1st percentile
    hi: float  # ... largest per-class 99th percentile
    notes: list[str] = field(default_factory=list)  # what it could not reach


ReachOf = Callable[[int, int, float], Reach]  # (min_level, max_level, anchor_scale) -> Reach


def fit_levels(
    sides: np.ndarray,
    labels: np.ndarray,
    reach_of: ReachOf,
    *,
    fit_scale: bool,
    anchor_scale: float,
    levels: tuple[int, int] = LEVEL_BOUNDS,
) -> LevelFit:
    """FPN levels (and, with ``fit_scale``, the anchor scale) whose reach spans every
    class's 1st to 99th percentile side [lo, hi], as cheaply as it can.

    Finest level: the coarsest one whose reach still goes down to ``lo``. With
    ``fit_scale`` the anchor scale is set so that the reach starts exactly at ``lo``, at the
    coarsest level where that takes at least ``MIN_ANCHOR_SCALE`` strides (below that,
    anchors a half-stride off a box's centre lose IoU 0.5 with it); the anchor sizes are
    linear in the scale, so one reach at scale 1 gives it. Coarsest level: the first one
    whose (nominal) reach goes up to ``hi``. Deterministic: the same sides give the same
    numbers. ``reach_of`` is the detector's own reach (``detectors.models.reach``).
    """
    first, last = levels
    lo = class_quantile(sides, labels, FIT_QUANTILES[0], low=True)
    hi = class_quantile(sides, labels, FIT_QUANTILES[1], low=False)
    notes: list[str] = []
    if not (lo > 0 and hi > 0):
        top = max(first, MIN_TOP_LEVEL)
        return LevelFit(first, top, anchor_scale if fit_scale else None, lo, hi, ["no boxes"])
    min_level, scale = first, anchor_scale
    for level in range(last, first - 1, -1):  # coarse to fine: the first fit is the cheapest
        if fit_scale:
            scale = lo / reach_of(level, level, 1.0).low
            if scale >= MIN_ANCHOR_SCALE:
                min_level = level
                break
        elif reach_of(level, level, scale).low <= lo:
            min_level = level
            break
    else:
        if fit_scale:
            scale = max(lo / reach_of(first, first, 1.0).low, MIN_ANCHOR_SCALE)
    if reach_of(min_level, min_level, scale).low > lo:
        notes.append(f"boxes below {reach_of(min_level, min_level, scale).low:.1f} px")
    max_level = last
    for level in range(max(min_level, MIN_TOP_LEVEL), last + 1):
        if reach_of(min_level, level, scale).high >= hi:
            max_level = level
            break
    else:
        notes.append(f"boxes above {reach_of(min_level, last, scale).high:.1f} px")
    return LevelFit(min_level, max_level, round(scale, 3) if fit_scale else None, lo, hi, notes)


def fit_iterations(
    num_images: int, *, batch_size: int, image_size: int, epochs: float, budget_mpix: float
) -> int:
    """``epochs`` passes over ``num_images``, at most ``budget_mpix`` megapixels of batches
    (``image_size²`` an image; 0 = no cap); at least 1."""
    iterations = math.ceil(epochs * num_images / batch_size)
    if budget_mpix > 0:
        iterations = min(iterations, int(budget_mpix * 1e6 / (batch_size * image_size**2)))
    return max(iterations, 1)


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class GeometryReport:
    """The box-size section of ``corrtune data check`` (built by ``detectors.fit``)."""

    image_size: int
    detector: str
    stats: list[ClassStats]
    reach: Reach | None  # None: the detector has no anchors or points (Sparse R-CNN)
    num_boxes: int
    below: dict[str, int]  # per class: boxes smaller than the reach
    above: dict[str, int]  # per class: boxes larger than it
    fix: str  # the setting that would fix it ("" when nothing is out of reach)

    @property
    def num_outside(self) -> int:
        return sum(self.below.values()) + sum(self.above.values())

    @property
    def worth_a_warning(self) -> bool:
        """Whether some class has more boxes out of reach than a fit leaves out (its tails
        beyond the 1st and 99th percentiles: 2% of the class, rounded up)."""
        tails = 2 * FIT_QUANTILES[0]
        return any(
            self.below.get(s.name, 0) + self.above.get(s.name, 0) > math.ceil(tails * s.count)
            for s in self.stats
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "image_size": self.image_size,
            "detector": self.detector,
            "reach": None
            if self.reach is None
            else {
                "low": self.reach.low,
                "high": self.reach.high,
                "open_above": self.reach.open_above,
            },
            "classes": [
                {
                    "name": s.name,
                    "count": s.count,
                    "side_p5_p50_p95": list(s.side),
                    "aspect_p5_p50_p95": list(s.aspect),
                    "below": self.below.get(s.name, 0),
                    "above": self.above.get(s.name, 0),
                }
                for s in self.stats
            ],
            "num_boxes": self.num_boxes,
            "num_outside": self.num_outside,
            "fix": self.fix,
        }

    def format(self) -> str:
        if self.reach is None:
            where = f"{self.detector} has no anchors or points"
        else:
            high = "open above" if self.reach.open_above else f"{self.reach.high:.1f} px"
            where = (
                f"{self.detector}: {self.reach.locations}; reach {self.reach.low:.1f} px to {high}"
            )
        lines = [
            f"  box sizes at {self.image_size} px ({where}):",
            f"    {'class':<14}{'boxes':>7}   side p5/p50/p95 px   aspect h/w p5/p50/p95"
            + ("   below  above" if self.reach is not None else ""),
        ]
        for s in self.stats:
            side = " ".join(f"{v:6.1f}" for v in s.side)
            aspect = " ".join(f"{v:5.2f}" for v in s.aspect)
            row = f"    {s.name[:14]:<14}{s.count:>7}   {side:<20} {aspect:<22}"
            if self.reach is not None:
                row += f"{self.below.get(s.name, 0):>7}{self.above.get(s.name, 0):>7}"
            lines.append(row.rstrip())
        if self.num_outside and not self.worth_a_warning:
            lines.append(
                f"  {self.num_outside} of {self.num_boxes} boxes are out of reach: the "
                f"tails, at most {2 * FIT_QUANTILES[0]:.0%} of any class"
            )
        elif self.num_outside and self.reach is not None:
            parts = []
            if sum(self.below.values()):
                parts.append(f"{sum(self.below.values())} smaller than {self.reach.low:.1f} px")
            if sum(self.above.values()):
                parts.append(f"{sum(self.above.values())} larger than {self.reach.high:.1f} px")
            lines.append(
                f"  warning: {self.num_outside} of {self.num_boxes} boxes are out of the "
                f"detector's reach ({', '.join(parts)}); fix: {self.fix}"
            )
        return "\n".join(lines)
