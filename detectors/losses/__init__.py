"""Losses: classification, box regression, Correlation Loss and DC weighting.

Each slot is a flat name -> implementation table: ``CLASSIFICATION_LOSSES``,
``REGRESSION_LOSSES`` and ``CORRELATIONS``. The classification slot holds element-wise
losses (:class:`ElementwiseClassificationLoss`: ``[N, C] -> [N, C]``, summed and normalised
by the detector) and Rank & Sort Loss (:class:`RankSortLoss`: flattened pairs -> two
normalised scalars, with its own box-loss balance); detectors tell them apart with
``isinstance(loss, ElementwiseClassificationLoss)``.
"""

from detectors.losses.classification_base import ElementwiseClassificationLoss
from detectors.losses.correlation import (
    CORRELATIONS,
    CorrelationFn,
    CorrelationLoss,
    CorrelationOutput,
    correlation_coefficient,
    correlation_loss,
    pooled_correlation,
    pooled_correlation_loss,
)
from detectors.losses.dc import DCWeighting, dc_weighted_sum, dc_weights
from detectors.losses.focal import FocalLoss, sigmoid_focal_loss
from detectors.losses.quality_focal import QualityFocalLoss, quality_focal_loss
from detectors.losses.rank_sort import RankSortLoss, rank_sort_loss, rs_box_loss
from detectors.losses.regression import REGRESSION_LOSSES, RegressionLoss
from detectors.losses.varifocal import VarifocalLoss, varifocal_loss

CLASSIFICATION_LOSSES: dict[str, type[ElementwiseClassificationLoss] | type[RankSortLoss]] = {
    "focal": FocalLoss,
    "qfl": QualityFocalLoss,
    "vfl": VarifocalLoss,
    "rs": RankSortLoss,
}

__all__ = [
    "CLASSIFICATION_LOSSES",
    "CORRELATIONS",
    "REGRESSION_LOSSES",
    "CorrelationFn",
    "CorrelationLoss",
    "CorrelationOutput",
    "DCWeighting",
    "ElementwiseClassificationLoss",
    "FocalLoss",
    "QualityFocalLoss",
    "RankSortLoss",
    "RegressionLoss",
    "VarifocalLoss",
    "correlation_coefficient",
    "correlation_loss",
    "dc_weighted_sum",
    "dc_weights",
    "pooled_correlation",
    "pooled_correlation_loss",
    "quality_focal_loss",
    "rank_sort_loss",
    "rs_box_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
]
