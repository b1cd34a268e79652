"""COCO box AP (AP, AP50, AP75, APs, APm, APl and per class), equal to pycocotools.

``coco_ap`` runs the vectorized matching of ``matching.py`` and then pycocotools' own
``accumulate`` arithmetic (cumulative TP/FP, interpolated precision at 101 recall points), so
the numbers agree with ``COCOeval`` to floating-point summation order. ``backend`` runs
pycocotools or faster-coco-eval themselves instead, for cross-checks.

Conventions kept from pycocotools: the 100-detection limit applies per image *and category*;
a value is -1 where it is undefined (no ground truth in that area range or category).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pycocotools.coco import COCO

from detectors.metrics.coco_io import Detections, GroundTruth, quiet_stdout
from detectors.metrics.matching import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    Candidates,
    MatchResult,
    find_candidates,
    match_detections,
)

RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
RECALL_THRESHOLDS.setflags(write=False)

Backend = Literal["native", "pycocotools", "faster-coco-eval"]


def evaluation_order(dets: Detections, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (increasing) of ``dets`` ordered by category, then as COCO's accumulate ranks.

    pycocotools concatenates images in increasing id, each image's detections by decreasing
    score (ties in list order), and merge-sorts the whole by decreasing score: ties between
    images go to the lower image id, ties within one to the earlier detection (``lexsort`` is
    stable, so increasing ``rows`` settle that last key).
    """
    return rows[np.lexsort((dets.image_index[rows], -scores[rows], dets.category_index[rows]))]


def accumulate_precision(
    dets: Detections,
    gt: GroundTruth,
    match: MatchResult,
    scores: np.ndarray,
    area_ranges: Sequence[tuple[float, float]],
    image_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolated precision [T, R, K, A] at the recall thresholds, as ``COCOeval.accumulate``.

    -1 where a category has no non-ignored ground truth in an area range. ``image_weights``
    [I] (non-negative integers; default all 1) counts each image that many times, as if the
    dataset held that many copies of it: a bootstrap resample of the images.
    """
    num_thr, num_area, num_cat = match.matched.shape[0], len(area_ranges), gt.num_categories
    precision = -np.ones((num_thr, len(RECALL_THRESHOLDS), num_cat, num_area))
    order = evaluation_order(dets, scores, np.flatnonzero(match.kept))
    det_weight = None if image_weights is None else image_weights[dets.image_index[order]]
    gt_weight = None if image_weights is None else image_weights[gt.image_index]
    true_pos = match.true_positive[:, :, order]  # [T, A, n]
    false_pos = match.false_positive[:, :, order]
    if det_weight is not None:
        true_pos = true_pos * det_weight  # counts, no longer flags
        false_pos = false_pos * det_weight
    cat_bounds = np.searchsorted(dets.category_index[order], np.arange(num_cat + 1))
    for a, (low, high) in enumerate(area_ranges):
        regular = ~gt.crowd & (gt.areas >= low) & (gt.areas <= high)
        num_regular = np.bincount(
            gt.category_index[regular],
            weights=None if gt_weight is None else gt_weight[regular],
            minlength=num_cat,
        )
        for k in range(num_cat):
            if num_regular[k] == 0:
                continue
            cat_rows = slice(cat_bounds[k], cat_bounds[k + 1])
            tp_sum = np.cumsum(true_pos[:, a, cat_rows], axis=1).astype(np.float64)  # [T, n_k]
            fp_sum = np.cumsum(false_pos[:, a, cat_rows], axis=1).astype(np.float64)
            recall = tp_sum / num_regular[k]
            prec = tp_sum / (fp_sum + tp_sum + np.spacing(1))
            prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # precision envelope
            num_kept = prec.shape[1]
            for t in range(num_thr):
                at = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
                reached = at < num_kept
                values = np.zeros(len(RECALL_THRESHOLDS))
                values[reached] = prec[t, at[reached]]
                precision[t, :, k, a] = values
    return precision


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _threshold_index(threshold: float) -> int:
    return int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, threshold))[0])


def summarize_precision(
    precision: np.ndarray, category_keys: Sequence[str] | None = None
) -> dict[str, float]:
    """COCO summary from precision [T, R, K, A] (areas in ``AREA_RANGES`` order, or only "all").

    Keys AP, AP50, AP75 (and APs, APm, APl when the area ranges are there), and
    ``AP/<category>`` for each of ``category_keys``.
    """
    t50, t75 = _threshold_index(0.5), _threshold_index(0.75)
    summary = {
        "AP": _mean_defined(precision[:, :, :, 0]),
        "AP50": _mean_defined(precision[t50, :, :, 0]),
        "AP75": _mean_defined(precision[t75, :, :, 0]),
    }
    if precision.shape[3] == len(AREA_RANGES):
        for suffix, a in (("s", 1), ("m", 2), ("l", 3)):
            summary[f"AP{suffix}"] = _mean_defined(precision[:, :, :, a])
    for k, key in enumerate(category_keys or []):
        summary[f"AP/{key}"] = _mean_defined(precision[:, :, k, 0])
    return summary


def native_precision(
    dets: Detections,
    gt: GroundTruth,
    candidates: Candidates,
    *,
    area_ranges: Collection[tuple[float, float]],
) -> tuple[np.ndarray, MatchResult]:
    """Precision [T, R, K, A] over the 10 COCO thresholds, and the matching behind it.

    ``candidates`` must hold every pair with IoU >= 0.5 (``find_candidates(dets, gt, 0.5)``).
    """
    match = match_detections(
        dets,
        gt,
        candidates,
        dets.scores,
        iou_thresholds=IOU_THRESHOLDS,
        area_ranges=list(area_ranges),
    )
    return accumulate_precision(dets, gt, match, dets.scores, list(area_ranges)), match


def reference_precision(
    coco_gt: COCO,
    detections: Sequence[Mapping[str, Any]],
    library: Literal["pycocotools", "faster-coco-eval"],
) -> np.ndarray:
    """Precision [T, R, K, A] at 100 detections computed by pycocotools or faster-coco-eval.

    The detections are deep-copied first (``loadRes`` writes into them). Needs at least one
    detection (both libraries fail on an empty list).
    """
    results = copy.deepcopy(list(detections))
    with quiet_stdout():
        if library == "pycocotools":
            from pycocotools.cocoeval import COCOeval

            evaluator: Any = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        else:
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster

            faster_gt = FasterCOCO(copy.deepcopy(coco_gt.dataset))
            evaluator = COCOeval_faster(
                faster_gt,
                faster_gt.loadRes(results),
                "bbox",
                print_function=lambda *args, **kwargs: None,
            )
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"])[..., -1]


def coco_ap(
    coco_gt: COCO, detections: Sequence[Mapping[str, Any]], *, backend: Backend = "native"
) -> dict[str, float]:
    """COCO box AP of ``detections`` (COCO result dicts) against ``coco_gt``.

    Returns AP, AP50, AP75, APs, APm, APl and ``AP/<category name>`` (names made MLflow-safe),
    all in [0, 1], -1 where undefined (pycocotools' convention). No detections give 0 wherever
    there is ground truth. ``backend`` selects who computes it; all three agree to 1e-4.
    """
    gt = GroundTruth.from_coco(coco_gt)
    if backend == "native" or not detections:
        dets = Detections.from_list(detections, gt)
        candidates = find_candidates(dets, gt, float(IOU_THRESHOLDS.min()))
        precision, _ = native_precision(dets, gt, candidates, area_ranges=AREA_RANGES.values())
    elif backend in ("pycocotools", "faster-coco-eval"):
        precision = reference_precision(coco_gt, detections, backend)
    else:
        raise ValueError(f"unknown COCO AP backend {backend!r}")
    return summarize_precision(precision, gt.category_keys())
