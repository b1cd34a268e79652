"""Detectors, built from an :class:`~detectors.config.ExperimentConfig` in one place.

``build_detector(cfg, num_classes)`` is the only function that turns config values into
objects (backbone, head, assigner, losses, NMS); everything below it takes objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectors.assigners import (
    Assigner,
    ATSSAssigner,
    FCOSAssigner,
    FoveaAssigner,
    IACAssigner,
    MaxIoUAssigner,
    PAAAssigner,
)
from detectors.config import ConfigError, ExperimentConfig
from detectors.losses.focal import FocalLoss
from detectors.models.anchors import AnchorGenerator
from detectors.models.atss import ANCHOR_SCALE as ATSS_ANCHOR_SCALE
from detectors.models.atss import ATSS
from detectors.models.backbone import BackboneWithFPN, PretrainedWeightsError, build_backbone
from detectors.models.dense import DenseDetector, PostprocessParams
from detectors.models.fcos import FCOS, PointHead
from detectors.models.foveabox import FoveaBox
from detectors.models.matcher import HungarianMatcher
from detectors.models.paa import PAA
from detectors.models.retinanet import RetinaNet, RetinaNetHead
from detectors.models.sparse_rcnn import SparseRCNN, SparseRCNNHead
from detectors.postprocess import NMS, CLBalancedNMS, GreedyNMS, SoftNMS

__all__ = [
    "ATSS",
    "DETECTORS",
    "FCOS",
    "PAA",
    "DenseDetector",
    "FoveaBox",
    "PretrainedWeightsError",
    "RetinaNet",
    "SparseRCNN",
    "build_assigner",
    "build_detector",
    "build_nms",
]


# Heads whose locations are anchor boxes: the only ones IAC (an anchor-IoU rule) applies to.
ANCHOR_BASED = ("retinanet", "atss", "paa")


def build_assigner(cfg: ExperimentConfig) -> Assigner:
    """IAC when ``assign.kind`` says so; otherwise the detector's own rule (``max_iou`` means
    the native assigner: max-IoU for RetinaNet, ATSS / FCOS / FoveaBox for the others)."""
    a, m = cfg.assign, cfg.model
    low_quality = cfg.model.low_quality_matches
    if a.kind == "iac" and m.name not in ANCHOR_BASED:
        raise ConfigError(
            "",
            "assign.kind",
            f"iac needs an anchor-based detector ({', '.join(ANCHOR_BASED)}); "
            f"{m.name} has no anchors",
        )
    if a.kind != "iac" and m.name == "atss":
        return ATSSAssigner(topk=m.atss_topk)
    if a.kind != "iac" and m.name == "paa":
        loss = cfg.loss
        return PAAAssigner(
            topk=m.paa_topk, focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma
        )
    if m.name == "fcos":
        return FCOSAssigner(center_sampling_radius=m.center_sampling_radius)
    if m.name == "foveabox":
        return FoveaAssigner(sigma=m.fovea_sigma)
    if a.kind == "iac":
        return IACAssigner(
            fg_iou=a.fg_iou,
            bg_iou=a.bg_iou,
            allow_low_quality_matches=low_quality,
            alpha=a.alpha,
            score_thr=a.score_thr,
            form=a.form,
            warmup_iters=a.warmup_iters,
        )
    return MaxIoUAssigner(fg_iou=a.fg_iou, bg_iou=a.bg_iou, allow_low_quality_matches=low_quality)


def build_nms(cfg: ExperimentConfig) -> NMS:
    n = cfg.nms
    if n.kind == "soft":
        return SoftNMS(iou_threshold=n.iou_threshold, sigma=n.soft_sigma, method=n.soft_method)
    if n.kind == "cl_balanced":
        return CLBalancedNMS(iou_threshold=n.iou_threshold, beta=n.beta)
    return GreedyNMS(iou_threshold=n.iou_threshold)


def _retinanet(cfg: ExperimentConfig, backbone: BackboneWithFPN, base: dict[str, Any]) -> Any:
    m = cfg.model
    anchors = AnchorGenerator(
        levels=backbone.levels,
        anchor_scale=m.anchor_scale,
        ratios=m.anchor_ratios,
        scales_per_octave=m.scales_per_octave,
    )
    head = RetinaNetHead(
        in_channels=m.fpn_channels,
        num_anchors=anchors.num_anchors,
        num_classes=base["num_classes"],
        num_convs=m.head_convs,
        norm=m.norm,
        prior_prob=m.prior_prob,
    )
    return RetinaNet(head=head, anchor_generator=anchors, **base)


def _point_model(cls: type[FCOS], anchor_scale: float, centerness: bool) -> Any:
    """Builder of an FCOS-family detector: one location per cell (a square of
    ``anchor_scale · stride``), the shared :class:`PointHead`."""

    def build(cfg: ExperimentConfig, backbone: BackboneWithFPN, base: dict[str, Any]) -> FCOS:
        m = cfg.model
        head = PointHead(
            in_channels=m.fpn_channels,
            num_classes=base["num_classes"],
            num_levels=len(backbone.levels),
            num_convs=m.head_convs,
            norm=m.norm,
            prior_prob=m.prior_prob,
            centerness=centerness and m.centerness,
        )
        locations = AnchorGenerator(
            levels=backbone.levels, anchor_scale=anchor_scale, ratios=(1.0,), scales_per_octave=1
        )
        return cls(head=head, anchor_generator=locations, **base)

    return build


def _sparse_rcnn(
    cfg: ExperimentConfig, backbone: BackboneWithFPN, base: dict[str, Any]
) -> SparseRCNN:
    """Sparse R-CNN takes the correlation loss; the dense-head methods are errors (and the
    dense knobs ``loss.reg*``, ``anchor_*``, ``assign.*``, ``nms.*`` except ``max_detections``
    are unused)."""
    m, s, loss = cfg.model, cfg.model.sparse, cfg.loss
    problems = [  # (key, whether it is set to something sparse_rcnn cannot do, why)
        ("loss.dc.enabled", loss.dc.enabled, "the DC loss needs a dense head"),
        ("nms.kind", cfg.nms.kind != "greedy", "sparse_rcnn is NMS-free (no NMS runs)"),
        (
            "loss.corr.pool",
            loss.corr.pool == "level",
            "sparse_rcnn has no FPN-level pools; use batch or image",
        ),
        (
            "model.fpn_channels",
            m.fpn_channels % s.attention_heads != 0,
            f"must be divisible by model.sparse.attention_heads ({s.attention_heads})",
        ),
    ]
    for key, unsupported, why in problems:
        if unsupported:
            raise ConfigError("", key, why)
    head = SparseRCNNHead(
        levels=backbone.levels,
        num_classes=base["num_classes"],
        num_proposals=m.num_proposals,
        num_stages=m.num_stages,
        dim=m.fpn_channels,
        attention_heads=s.attention_heads,
        ffn_dim=s.ffn_multiplier * m.fpn_channels,
        dynamic_dim=max(1, m.fpn_channels // s.dynamic_divisor),
        pooler_resolution=s.pooler_resolution,
        sampling_ratio=s.sampling_ratio,
        cls_fcs=s.cls_fcs,
        reg_fcs=s.reg_fcs,
        dropout=s.dropout,
        prior_prob=m.prior_prob,
    )
    matcher = HungarianMatcher(
        cls_weight=loss.sparse.cls_weight,
        l1_weight=loss.sparse.l1_weight,
        giou_weight=loss.sparse.giou_weight,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )
    return SparseRCNN(
        backbone=backbone,
        head=head,
        matcher=matcher,
        num_classes=base["num_classes"],
        cls_loss=base["cls_loss"],
        loss_weights=loss.sparse,
        corr=loss.corr,
        max_detections=cfg.nms.max_detections,
    )


def _paa(cfg: ExperimentConfig, backbone: BackboneWithFPN, base: dict[str, Any]) -> Any:
    """ATSS's builder (its centerness conv is PAA's IoU branch; ``model.centerness=false``
    drops it, the paper's ablation) with PAA's own box loss (always GIoU: the anchor score
    is defined with it) and post-processing options."""
    m = cfg.model
    paa = {
        "reg_loss": "giou",
        "reg_weight": m.paa_reg_weight,
        "score_voting": m.paa_score_voting,
        "iou_weight": m.paa_iou_weight,
    }
    return _point_model(PAA, ATSS_ANCHOR_SCALE, centerness=True)(cfg, backbone, base | paa)


# model.name -> builder(cfg, backbone, common keyword arguments) -> detector.
DETECTORS: dict[str, Callable[[ExperimentConfig, BackboneWithFPN, dict[str, Any]], Any]] = {
    "retinanet": _retinanet,
    "atss": _point_model(ATSS, ATSS_ANCHOR_SCALE, centerness=True),
    "fcos": _point_model(FCOS, 1.0, centerness=True),
    "foveabox": _point_model(FoveaBox, 1.0, centerness=False),
    "paa": _paa,
    "sparse_rcnn": _sparse_rcnn,
}


# What build_detector returns: a dense detector, or the set predictor Sparse R-CNN.
Detector = DenseDetector | SparseRCNN


def build_detector(cfg: ExperimentConfig, num_classes: int) -> Detector:
    m = cfg.model
    backbone = build_backbone(
        m.backbone,
        pretrained=m.pretrained,
        fpn_channels=m.fpn_channels,
        min_level=m.min_level,
        max_level=m.max_level,
        frozen_stages=m.frozen_stages,
        frozen_bn=m.frozen_bn,
    )
    post = PostprocessParams(
        score_threshold=cfg.nms.score_threshold,
        pre_nms_topk=cfg.nms.pre_nms_topk,
        max_detections=cfg.nms.max_detections,
    )
    base: dict[str, Any] = {
        "assigner": build_assigner(cfg),
        "reg_loss": cfg.loss.reg,
        "reg_weight": cfg.loss.reg_weight,
        "backbone": backbone,
        "num_classes": num_classes,
        "cls_loss": FocalLoss(alpha=cfg.loss.focal_alpha, gamma=cfg.loss.focal_gamma),
        "corr": cfg.loss.corr,
        "dc": cfg.loss.dc,
        "nms": build_nms(cfg),
        "post": post,
    }
    detector: Detector = DETECTORS[m.name](cfg, backbone, base)
    return detector
