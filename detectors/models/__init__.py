"""Detectors, built from an :class:`~detectors.config.ExperimentConfig` in one place.

``build_detector(cfg, num_classes)`` (:mod:`detectors.models.build`) is the only function
that turns config values into objects (backbone, head, assigner, losses, NMS); everything
below it takes objects. ``check_settings(cfg)`` is its refusal of settings nothing reads,
without building anything.
"""

from detectors.models.atss import ATSS
from detectors.models.backbone import PretrainedWeightsError
from detectors.models.build import (
    DETECTORS,
    Detector,
    DetectorSpec,
    build_assigner,
    build_detector,
    build_nms,
    check_settings,
    setting_problems,
    settings_read,
)
from detectors.models.dense import DenseDetector
from detectors.models.fcos import FCOS
from detectors.models.foveabox import FoveaBox
from detectors.models.paa import PAA
from detectors.models.retinanet import RetinaNet
from detectors.models.sparse_rcnn import SparseRCNN

__all__ = [
    "ATSS",
    "DETECTORS",
    "FCOS",
    "PAA",
    "DenseDetector",
    "Detector",
    "DetectorSpec",
    "FoveaBox",
    "PretrainedWeightsError",
    "RetinaNet",
    "SparseRCNN",
    "build_assigner",
    "build_detector",
    "build_nms",
    "check_settings",
    "setting_problems",
    "settings_read",
]
