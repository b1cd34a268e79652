"""Settings fitted to the training boxes, and how the boxes sit against a detector.

``fit_config(cfg, cache_dir)`` turns every ``fit.*`` switch at ``auto`` into numbers
(``data.image_size``; ``model.min_level``, ``max_level`` and RetinaNet's
``model.anchor_scale``; ``train.iterations``) read off the training split, and sets the
switch to ``fitted``: the returned config is what a run logs and checkpoints, and it repeats
the run without fitting again. ``geometry_report`` is the box-size section of ``corrtune
data check``: per-class statistics at the input size, how many boxes the detector's
locations cannot reach, and the setting that would fix it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np

from detectors.config import ConfigError, DataConfig, ExperimentConfig, from_dict, to_dict
from detectors.data.geometry import (
    FIT_QUANTILES,
    BoxSizes,
    GeometryReport,
    class_quantile,
    class_stats,
    fit_image_size,
    fit_iterations,
    fit_levels,
    outside,
)
from detectors.data.splits import build_split
from detectors.data.transforms import SIZE_DIVISIBLE
from detectors.models.reach import SCALED_ANCHORS, detector_reach, reach_with


def fit_config(cfg: ExperimentConfig, cache_dir: Path | None) -> ExperimentConfig:
    """``cfg`` with its ``auto`` settings fitted to its training split (unchanged without).

    ``cache_dir`` holds the synthetic set when ``data.root`` is empty; None means it is not
    known here (a sweep's driver, which must log the fitted numbers before the trials run:
    it asks for a ``data.root``).
    """
    if not cfg.fit.pending:
        return cfg
    if cache_dir is None and cfg.data.kind == "synthetic" and not cfg.data.root:
        raise ConfigError(
            "",
            "data.root",
            "fit.* at auto in a sweep fits in the driver, before the synthetic set exists: "
            "give it a data.root (a folder it is made in)",
        )
    return fit_to(cfg, training_box_sizes(cfg, cache_dir or Path.cwd() / ".corrtune"))


def training_box_sizes(cfg: ExperimentConfig, cache_dir: Path) -> BoxSizes:
    """The training split's boxes (read once per dataset and process: a sweep's driver
    resolves every trial's config many times)."""
    key = dataclasses.replace(cfg.data, image_size=DataConfig.image_size, num_workers=0)
    return _box_sizes(key, str(cache_dir))


@functools.lru_cache(maxsize=8)
def _box_sizes(data: DataConfig, cache_dir: str) -> BoxSizes:
    cfg = ExperimentConfig(data=data)
    dataset = build_split(cfg, "train", Path(cache_dir), train=False, image_size=None)
    return BoxSizes.from_records(dataset.records, dataset.classes)


def fit_to(cfg: ExperimentConfig, sizes: BoxSizes) -> ExperimentConfig:
    """``cfg`` with its ``auto`` settings fitted to ``sizes`` (see the module docstring):
    first the image size, then the levels at that size, then the schedule at that size."""
    f = cfg.fit
    data, model, train, fit = cfg.data, cfg.model, cfg.train, cfg.fit
    if f.image_size == "auto":
        size = fit_image_size(
            sizes, min_box_side=f.min_box_side, low=f.min_image_size, high=data.image_size
        )
        data = dataclasses.replace(data, image_size=size)
        fit = dataclasses.replace(fit, image_size="fitted")
    if f.geometry == "auto":
        at_size = dataclasses.replace(cfg, data=data)
        # Sparse R-CNN has no locations to fit; without boxes there is nothing to fit to.
        if detector_reach(at_size) is not None and len(sizes):
            levels = fit_levels(
                sizes.sides(data.image_size),
                sizes.labels,
                functools.partial(reach_with, at_size),
                fit_scale=model.name in SCALED_ANCHORS,
                anchor_scale=model.anchor_scale,
            )
            model = dataclasses.replace(
                model,
                min_level=levels.min_level,
                max_level=levels.max_level,
                anchor_scale=levels.anchor_scale or model.anchor_scale,
            )
        fit = dataclasses.replace(fit, geometry="fitted")
    if f.schedule == "auto":
        iterations = fit_iterations(
            sizes.num_images,
            batch_size=train.batch_size,
            image_size=data.image_size,
            epochs=f.epochs,
            budget_mpix=f.budget_mpix,
        )
        train = dataclasses.replace(train, iterations=iterations)
        fit = dataclasses.replace(fit, schedule="fitted")
    fitted = dataclasses.replace(cfg, data=data, model=model, train=train, fit=fit)
    return from_dict(to_dict(fitted), "fitted config")


def fitted_values(before: ExperimentConfig, after: ExperimentConfig) -> dict[str, object]:
    """The settings a fit changed: ``{"data.image_size": 256, ...}``."""
    from detectors.config import flatten

    old, new = flatten(before), flatten(after)
    return {k: v for k, v in new.items() if old[k] != v and not k.startswith("fit.")}


def geometry_report(sizes: BoxSizes, cfg: ExperimentConfig) -> GeometryReport:
    """The boxes of ``sizes`` at ``cfg``'s input size against its detector's reach, with
    the setting that would bring the boxes it misses within reach."""
    image_size = cfg.data.image_size
    sides = sizes.sides(image_size)
    reach = detector_reach(cfg)
    below_per_class: dict[str, int] = {}
    above_per_class: dict[str, int] = {}
    if reach is not None and len(sides):
        below, above = outside(sides, reach)
        for label, name in enumerate(sizes.classes):
            mask = sizes.labels == label
            below_per_class[name] = int((below & mask).sum())
            above_per_class[name] = int((above & mask).sum())
    report = GeometryReport(
        image_size=image_size,
        detector=cfg.model.name,
        stats=class_stats(sizes, image_size),
        reach=reach,
        num_boxes=len(sides),
        below=below_per_class,
        above=above_per_class,
        fix="",
    )
    if report.worth_a_warning:
        report = dataclasses.replace(report, fix=_fix(sizes, cfg))
    return report


def _fix(sizes: BoxSizes, cfg: ExperimentConfig) -> str:
    """What the geometry fit would set here (unless it is on already), and a larger input
    size if it cannot reach the smallest boxes either."""
    fixes = []
    fitted = cfg
    if cfg.fit.geometry == "fixed":
        auto = dataclasses.replace(cfg, fit=dataclasses.replace(cfg.fit, geometry="auto"))
        fitted = fit_to(auto, sizes)
        changes = " ".join(f"{k}={v}" for k, v in fitted_values(cfg, fitted).items())
        fixes.append(f"--set fit.geometry=auto (here: {changes or 'the same levels'})")
    reach = detector_reach(fitted)
    assert reach is not None
    sides = sizes.sides(cfg.data.image_size)
    below, _ = outside(sides, reach)
    tails = 2 * FIT_QUANTILES[0]
    too_small = any(below[sizes.labels == c].mean() > tails for c in np.unique(sizes.labels))
    if too_small or not fixes:
        # the input size at which every class's 1st percentile reaches the finest locations
        smallest = class_quantile(sides, sizes.labels, FIT_QUANTILES[0], low=True)
        size = math.ceil(cfg.data.image_size * reach.low / smallest / SIZE_DIVISIBLE)
        key = "fit.min_image_size" if cfg.fit.image_size != "fixed" else "data.image_size"
        fixes.append(f"--set {key}={size * SIZE_DIVISIBLE} for the smallest boxes")
    return ", or ".join(fixes) if len(fixes) == 1 else fixes[0] + "; then " + fixes[1]
