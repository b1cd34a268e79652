"""The evaluation-set bootstrap: a resample's AP equals pycocotools on that many image
copies, and the noise it reports is reproducible."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectors.metrics import coco_ap, coco_from_dict, evaluate_detections
from detectors.metrics.bootstrap import bootstrap_ap, bootstrap_weights
from detectors.metrics.coco import accumulate_precision, summarize_precision
from detectors.metrics.coco_io import Detections, GroundTruth
from detectors.metrics.matching import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    find_candidates,
    match_detections,
)


def _match(dataset: dict[str, Any], dets: list[dict]) -> tuple[Detections, GroundTruth, Any]:
    gt = GroundTruth.from_coco(coco_from_dict(dataset))
    d = Detections.from_list(dets, gt)
    candidates = find_candidates(d, gt, 0.5)
    match = match_detections(
        d,
        gt,
        candidates,
        d.scores,
        iou_thresholds=IOU_THRESHOLDS,
        area_ranges=[AREA_RANGES["all"]],
    )
    return d, gt, match


def _copies(dataset: dict[str, Any], dets: list[dict], weights: np.ndarray) -> tuple[Any, list]:
    """The dataset and detections with image i repeated weights[i] times (new ids)."""
    images, anns, out = [], [], []
    ids = sorted(img["id"] for img in dataset["images"])
    for i, image_id in enumerate(ids):
        for copy in range(int(weights[i])):
            new_id = 10_000 * (copy + 1) + image_id
            images.append({"id": new_id})
            anns += [
                a | {"image_id": new_id}
                for a in dataset["annotations"]
                if a["image_id"] == image_id
            ]
            out += [d | {"image_id": new_id} for d in dets if d["image_id"] == image_id]
    for n, ann in enumerate(anns, 1):
        ann["id"] = n
    return {**dataset, "images": images, "annotations": anns}, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resample_is_pycocotools_on_the_image_copies(
    make_dataset: Callable[..., dict[str, Any]],
    make_detections: Callable[..., list[dict]],
    pycocotools_eval: Callable[[COCO, list[dict]], COCOeval],
    seed: int,
) -> None:
    dataset = make_dataset(seed, crowd_rate=0.1)
    dets = make_detections(dataset, seed, duplicate_rate=0.3, score_noise=0.2)
    # Distinct scores: pycocotools interleaves the copies of equally scored detections of
    # different images (copy 1 of each, then copy 2 ...); a resample counts a copy block.
    dets = [d | {"score": d["score"] + 1e-9 * i} for i, d in enumerate(dets)]
    assert len({d["score"] for d in dets}) == len(dets)
    d, gt, match = _match(dataset, dets)
    weights = np.random.default_rng(seed).integers(0, 4, len(gt.image_ids))
    weights[0] = max(weights[0], 1)
    precision = accumulate_precision(
        d, gt, match, d.scores, [AREA_RANGES["all"]], image_weights=weights
    )
    ours = summarize_precision(precision)
    copied, copied_dets = _copies(dataset, dets, weights)
    stats = pycocotools_eval(coco_from_dict(copied), copied_dets).stats
    assert ours["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(stats[1], abs=1e-12)
    assert ours["AP75"] == pytest.approx(stats[2], abs=1e-12)


def test_weights_of_one_are_the_evaluation_itself(
    make_dataset: Callable[..., dict[str, Any]], make_detections: Callable[..., list[dict]]
) -> None:
    dataset = make_dataset(3)
    dets = make_detections(dataset, 3)
    d, gt, match = _match(dataset, dets)
    ones = np.ones(len(gt.image_ids), dtype=np.int64)
    weighted = summarize_precision(
        accumulate_precision(d, gt, match, d.scores, [AREA_RANGES["all"]], image_weights=ones)
    )
    assert weighted["AP"] == coco_ap(coco_from_dict(dataset), dets)["AP"]


def test_resamples_draw_every_image_count_and_are_seeded() -> None:
    weights = bootstrap_weights(50, 20, seed=1)
    assert weights.shape == (20, 50) and (weights.sum(axis=1) == 50).all()
    assert (bootstrap_weights(50, 20, seed=1) == weights).all()
    assert not (bootstrap_weights(50, 20, seed=2) == weights).all()


def test_the_suite_reports_the_bootstrap_noise(
    make_dataset: Callable[..., dict[str, Any]], make_detections: Callable[..., list[dict]]
) -> None:
    dataset = make_dataset(4)
    dets = make_detections(dataset, 4, score_noise=0.3)
    metrics = evaluate_detections(coco_from_dict(dataset), dets, bootstrap=100)
    again = evaluate_detections(coco_from_dict(dataset), dets, bootstrap=100)
    assert metrics["AP_boot_sd"] == again["AP_boot_sd"] > 0  # reproducible, and not nothing
    d, gt, match = _match(dataset, dets)
    samples = bootstrap_ap(d, gt, match, num_samples=100)
    assert metrics["AP_boot_sd"] == pytest.approx(float(np.std(samples["AP"], ddof=1)))
    # The resamples scatter around the full set's AP.
    assert abs(float(np.mean(samples["AP"])) - metrics["AP"]) < 3 * metrics["AP_boot_sd"]
    assert "AP_boot_sd" not in evaluate_detections(coco_from_dict(dataset), dets)
