"""The whole evaluation suite in one call, sharing the work between the measures.

One conversion of the inputs, one IoU pass and one COCO matching give AP (all thresholds and
areas), the true positives at IoU 0.5 (for β_cls, oLRP and the AP bounds) and their IoUs; the
AP bounds re-run only the matching and accumulation with re-ranked scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detectors.metrics.bootstrap import bootstrap_sd
from detectors.metrics.bounds import bound_summaries
from detectors.metrics.coco import native_precision, summarize_precision
from detectors.metrics.coco_io import Detections, GroundTruth
from detectors.metrics.correlation import beta_img, mean_spearman
from detectors.metrics.lrp import lrp_from_match
from detectors.metrics.matching import AREA_RANGES, IOU_THRESHOLDS, find_candidates

# Every measure of the suite, by the key evaluate_detections gives it (besides one
# ``AP/<category>`` per category), then the VOC measures the engine adds on VOC data: what
# a sweep may optimise.
SUITE_METRICS: tuple[str, ...] = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AP_upper", "AP_lower", "AP50_upper", "AP50_lower", "AP75_upper", "AP75_lower"),
    *("beta_img", "beta_cls", "oLRP", "oLRP_Loc", "oLRP_FP", "oLRP_FN", "num_detections"),
)
BOOTSTRAP_METRICS: tuple[str, ...] = ("AP_boot_sd", "AP50_boot_sd", "AP75_boot_sd")
VOC_METRICS: tuple[str, ...] = ("VOC_mAP", "VOC07_mAP")
METRIC_NAMES: tuple[str, ...] = SUITE_METRICS + BOOTSTRAP_METRICS + VOC_METRICS
PER_CATEGORY_PREFIX = "AP/"  # AP/<category name>


def evaluate_detections(
    coco_gt: COCO,
    detections: Sequence[Mapping[str, Any]],
    pre_nms_pairs: Iterable[tuple[Any, Any]] | None = None,
    *,
    bootstrap: int = 0,
) -> dict[str, float]:
    """Every detection measure of corrtune for ``detections`` (COCO result dicts).

    ``pre_nms_pairs``: per image ``(scores, ious)`` of the positives before NMS, for β_img
    (NaN without it). Returns flat, MLflow-safe keys:

    - ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AP/<category>`` (COCO, equal to
      pycocotools; -1 where undefined);
    - ``AP_upper``, ``AP_lower``, ``AP50_upper``, ``AP50_lower``, ``AP75_upper``,
      ``AP75_lower`` (AP⁺¹ / AP⁻¹);
    - ``beta_img``, ``beta_cls`` (mean Spearman(IoU, score); NaN where undefined);
    - ``oLRP``, ``oLRP_Loc``, ``oLRP_FP``, ``oLRP_FN`` (τ = 0.5);
    - ``num_detections`` (length of the list given);
    - with ``bootstrap`` resamples (> 1): ``AP_boot_sd``, ``AP50_boot_sd``, ``AP75_boot_sd``,
      the evaluation-set noise of AP (:mod:`detectors.metrics.bootstrap`).
    """
    gt = GroundTruth.from_coco(coco_gt)
    dets = Detections.from_list(detections, gt)
    candidates = find_candidates(dets, gt, float(IOU_THRESHOLDS.min()))
    precision, match = native_precision(dets, gt, candidates, area_ranges=AREA_RANGES.values())
    metrics = summarize_precision(precision, gt.category_keys())

    # Row (IoU 0.5, all areas) of the matching is what β_cls, oLRP and the bounds build on.
    tp_rows = np.flatnonzero(match.true_positive[0, 0])
    tp_ious = match.iou[tp_rows]
    metrics.update(bound_summaries(dets, gt, match, tp_rows, tp_ious))

    metrics["beta_img"] = beta_img(pre_nms_pairs) if pre_nms_pairs is not None else float("nan")
    metrics["beta_cls"] = mean_spearman(
        tp_ious, dets.scores[tp_rows], dets.category_index[tp_rows]
    )
    lrp = lrp_from_match(dets, gt, match, 0.5)
    metrics["oLRP"], metrics["oLRP_Loc"] = lrp["oLRP"], lrp["oLRP_Loc"]
    metrics["oLRP_FP"], metrics["oLRP_FN"] = lrp["oLRP_FP"], lrp["oLRP_FN"]
    metrics["num_detections"] = float(len(detections))
    if bootstrap > 1:
        metrics.update(bootstrap_sd(dets, gt, match, num_samples=bootstrap))
    return metrics
