"""AP⁺¹ and AP⁻¹: the COCO AP the same detections would get under perfect (or reversed)
ranking of their true positives by IoU.

Every box stays, and so does every detection's match at every IoU threshold, as the
original evaluation made it (true positive, false positive or ignored). Only the true
positives at IoU 0.5 (all areas) of each class trade places in the evaluation's ranking
(ties included, as it broke them) so that their order follows their IoU (upper bound, AP⁺¹)
or its reverse (lower bound, AP⁻¹); the precision-recall curves are accumulated again in
that order. So AP⁻¹ ≤ AP ≤ AP⁺¹ at every threshold by construction, and at 0.5 all three are
equal (the true positives only trade places among themselves). Re-running the matching after
re-ranking instead would let a duplicate take over a match and can put the "lower" bound
above AP (seen on real data). The gap AP⁺¹ − AP is what better score-IoU correlation alone
could still gain (Kahraman et al., Correlation Loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detectors.metrics.coco import (
    accumulate_precision,
    evaluation_order,
    native_precision,
    summarize_precision,
)
from detectors.metrics.coco_io import Detections, GroundTruth
from detectors.metrics.matching import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MatchResult,
    find_candidates,
)


def rescore_true_positives(
    scores: np.ndarray,
    tp_rows: np.ndarray,
    tp_ious: np.ndarray,
    category: np.ndarray,
    *,
    follow_iou: bool,
) -> np.ndarray:
    """``scores`` [D] with the scores of ``tp_rows`` permuted within each category.

    After it, within a category the true positive of k-th highest IoU holds the k-th highest
    (``follow_iou``) or k-th lowest score of that category's true positives. Equal IoUs keep
    their current score order.
    """
    tp_scores, tp_category = scores[tp_rows], category[tp_rows]
    iou_key = -tp_ious if follow_iou else tp_ious
    by_iou = np.lexsort((-tp_scores, iou_key, tp_category))
    by_score = np.lexsort((-tp_scores, tp_category))
    rescored = scores.copy()
    rescored[tp_rows[by_iou]] = tp_scores[by_score]
    return rescored


def ranking_places(dets: Detections, kept: np.ndarray) -> np.ndarray:
    """[D] distinct stand-in scores that rank the kept detections exactly as the evaluation
    ranks them (minus each one's place in its category's order; -inf for the others)."""
    order = evaluation_order(dets, dets.scores, np.flatnonzero(kept))
    places = np.full(len(dets), -np.inf)
    places[order] = -np.arange(len(order), dtype=np.float64)
    return places


def bound_summaries(
    dets: Detections, gt: GroundTruth, match: MatchResult, tp_rows: np.ndarray, tp_ious: np.ndarray
) -> dict[str, float]:
    """AP, AP50, AP75 after re-ranking the true positives both ways, keeping ``match``.

    ``match``: the original evaluation's matching (its first area range must be "all");
    ``tp_rows``/``tp_ious``: its true positives at IoU 0.5 and their IoUs. Keys
    ``AP_upper``, ``AP50_upper``, ``AP75_upper`` and the same with ``_lower``.
    """
    all_areas = match.first_area()
    # The true positives trade places in the evaluation's ranking (ties broken as it broke
    # them), not raw scores: equal scores could otherwise reorder a true positive and a
    # false positive, and AP50 would move.
    places = ranking_places(dets, match.kept)
    bounds: dict[str, float] = {}
    for suffix, follow_iou in (("upper", True), ("lower", False)):
        scores = rescore_true_positives(
            places, tp_rows, tp_ious, dets.category_index, follow_iou=follow_iou
        )
        precision = accumulate_precision(dets, gt, all_areas, scores, [AREA_RANGES["all"]])
        for key, value in summarize_precision(precision).items():
            bounds[f"{key}_{suffix}"] = value
    return bounds


def ap_bounds(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO AP under the best and the worst re-ranking of the true positives by IoU.

    Returns ``AP_upper`` (AP⁺¹), ``AP_lower`` (AP⁻¹) and the same for AP50 and AP75
    (``AP50_upper``, ...); -1 where COCO AP is undefined (no ground truth).
    """
    gt = GroundTruth.from_coco(coco_gt)
    dets = Detections.from_list(detections, gt)
    candidates = find_candidates(dets, gt, float(IOU_THRESHOLDS.min()))
    _, match = native_precision(dets, gt, candidates, area_ranges=[AREA_RANGES["all"]])
    tp_rows = np.flatnonzero(match.true_positive[0, 0])
    return bound_summaries(dets, gt, match, tp_rows, match.iou[tp_rows])
