"""Detectors, built from an :class:`~detectors.config.ExperimentConfig` in one place.

``build_detector(cfg, num_classes)`` refuses a setting nothing the config chooses reads
(:mod:`detectors.models.reads`), then builds the detector (:mod:`detectors.models.build`,
the only code that turns config values into objects: backbone, head, assigner, losses,
NMS); everything below it takes objects. ``check_settings(cfg)`` is the refusal alone,
which builds nothing.
"""

from detectors.config import ExperimentConfig
from detectors.models.atss import ATSS
from detectors.models.backbone import PretrainedWeightsError
from detectors.models.build import (
    DETECTORS,
    Detector,
    DetectorSpec,
    assemble_detector,
    build_assigner,
    build_nms,
)
from detectors.models.dense import DenseDetector
from detectors.models.fcos import FCOS
from detectors.models.foveabox import FoveaBox
from detectors.models.paa import PAA
from detectors.models.reads import check_settings, setting_problems, settings_read
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


def build_detector(cfg: ExperimentConfig, num_classes: int) -> Detector:
    """The detector ``cfg`` describes, for ``num_classes`` classes; a setting the detector
    would not read, or a combination that means nothing, is a ConfigError first."""
    check_settings(cfg)
    return assemble_detector(cfg, num_classes)
