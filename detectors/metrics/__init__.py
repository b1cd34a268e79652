"""Detection measures: COCO AP, VOC mAP, β_img / β_cls, AP bounds, oLRP, and the whole suite.

Every function takes a ``pycocotools.coco.COCO`` ground truth and a list of COCO result dicts
(``image_id``, ``category_id``, ``bbox`` as xywh, ``score``). COCO AP equals pycocotools';
the others share its matching (greedy by score, crowd boxes ignored). ``evaluate_detections``
computes them all at once for the training loop.
"""

from detectors.metrics.bounds import ap_bounds
from detectors.metrics.coco import coco_ap
from detectors.metrics.coco_io import coco_from_dict, metric_key
from detectors.metrics.correlation import beta_cls, beta_img
from detectors.metrics.lrp import LrpResult, olrp
from detectors.metrics.suite import (
    METRIC_NAMES,
    PER_CATEGORY_PREFIX,
    evaluate_detections,
)
from detectors.metrics.voc import voc_map

__all__ = [
    "METRIC_NAMES",
    "PER_CATEGORY_PREFIX",
    "LrpResult",
    "ap_bounds",
    "beta_cls",
    "beta_img",
    "coco_ap",
    "coco_from_dict",
    "evaluate_detections",
    "metric_key",
    "olrp",
    "voc_map",
]
