"""Anchor assignment: the :class:`Assigner` contract and its implementations.

``ASSIGNERS`` is the one name -> class table a config resolves against.
"""

from detectors.assigners.atss import ATSSAssigner
from detectors.assigners.base import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    Assigner,
    AssignResult,
)
from detectors.assigners.fcos import FCOSAssigner
from detectors.assigners.fovea import FoveaAssigner
from detectors.assigners.iac import IACAssigner, iac_assign, iac_scores
from detectors.assigners.max_iou import MaxIoUAssigner
from detectors.assigners.paa import PAAAssigner

ASSIGNERS: dict[str, type[Assigner]] = {
    "max_iou": MaxIoUAssigner,
    "iac": IACAssigner,
    "atss": ATSSAssigner,
    "fcos": FCOSAssigner,
    "fovea": FoveaAssigner,
    "paa": PAAAssigner,
}

__all__ = [
    "ASSIGNERS",
    "IGNORED",
    "NEGATIVE",
    "POSITIVE",
    "ATSSAssigner",
    "AssignResult",
    "Assigner",
    "FCOSAssigner",
    "FoveaAssigner",
    "IACAssigner",
    "MaxIoUAssigner",
    "PAAAssigner",
    "iac_assign",
    "iac_scores",
]
