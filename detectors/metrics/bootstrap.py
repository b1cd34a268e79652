"""How much COCO AP would move on another draw of the validation images (the evaluation-set
noise), from one run's detections: a bootstrap over images.

Each resample draws as many images as the set holds, with replacement; an image drawn k
times counts k times (its ground truth and its detections, each keeping the match the
evaluation gave it: a detection's match is decided within its image). The precision-recall
curves are accumulated again with those counts, which gives the AP pycocotools gives a
dataset of those image copies, without matching anything again (exactly so when no two
detections of different images share a score: pycocotools would interleave their copies,
here each one's copies count as a block). The standard deviation of AP over the
resamples is the evaluation-set noise of that run's AP; compared with the seed noise (the
standard deviation over training seeds) it says which of the two limits a comparison.
"""

from __future__ import annotations

import numpy as np

from detectors.metrics.coco import accumulate_precision, summarize_precision
from detectors.metrics.coco_io import Detections, GroundTruth
from detectors.metrics.matching import AREA_RANGES, MatchResult

BOOTSTRAP_KEYS = ("AP", "AP50", "AP75")


def bootstrap_weights(num_images: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """[S, I] how often each image is drawn in each of ``num_samples`` resamples."""
    rng = np.random.default_rng(seed)
    if num_images == 0:
        return np.zeros((num_samples, 0), dtype=np.int64)
    return rng.multinomial(num_images, np.full(num_images, 1 / num_images), size=num_samples)


def bootstrap_ap(
    dets: Detections,
    gt: GroundTruth,
    match: MatchResult,
    *,
    num_samples: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """AP, AP50 and AP75 of each resample ([S] arrays); ``match`` is the evaluation's
    (its first area range "all")."""
    all_areas = match.first_area()
    out: dict[str, list[float]] = {key: [] for key in BOOTSTRAP_KEYS}
    for weights in bootstrap_weights(len(gt.image_ids), num_samples, seed):
        precision = accumulate_precision(
            dets, gt, all_areas, dets.scores, [AREA_RANGES["all"]], image_weights=weights
        )
        summary = summarize_precision(precision)
        for key in BOOTSTRAP_KEYS:
            out[key].append(summary[key])
    return {key: np.asarray(values) for key, values in out.items()}


def bootstrap_sd(
    dets: Detections, gt: GroundTruth, match: MatchResult, *, num_samples: int = 200, seed: int = 0
) -> dict[str, float]:
    """``{"AP_boot_sd": ..., "AP50_boot_sd": ..., "AP75_boot_sd": ...}``: the standard
    deviation (n − 1) of each over the resamples; NaN where AP is undefined (no ground
    truth) or for fewer than two resamples."""
    samples = bootstrap_ap(dets, gt, match, num_samples=num_samples, seed=seed)
    out = {}
    for key, values in samples.items():
        defined = values[values > -1]
        out[f"{key}_boot_sd"] = float(np.std(defined, ddof=1)) if len(defined) > 1 else np.nan
    return out
