"""Config -> detector, in one place: the only code that turns config values into objects.

Every slot resolves its member from the slot's own table (``ASSIGNERS``,
``CLASSIFICATION_LOSSES``, ``REGRESSION_LOSSES``, ``CORRELATIONS``, ``NMS_METHODS``), with the
member's constructor arguments taken from the settings named next to it here
(``ASSIGNER_SETTINGS``...; a table member without its settings fails at import); the
detector's own parts (head, locations, box coder) come from its row of ``DETECTORS``, a
:class:`DetectorSpec` that must also say which settings the detector reads. Everything
below takes objects. :mod:`detectors.models.reads` turns these declarations into what a
config reads and refuses what nothing reads; ``detectors.models.build_detector`` checks
that first, then calls :func:`assemble_detector`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import detectors.models.atss as atss
import detectors.models.fcos as fcos
import detectors.models.foveabox as foveabox
from detectors.assigners import ASSIGNERS, Assigner
from detectors.config import ExperimentConfig
from detectors.losses import (
    CLASSIFICATION_LOSSES,
    CORRELATIONS,
    REGRESSION_LOSSES,
    CorrelationLoss,
    DCWeighting,
    ElementwiseClassificationLoss,
    RankSortLoss,
    RegressionLoss,
)
from detectors.losses.focal import FocalLoss
from detectors.models.anchors import AnchorGenerator
from detectors.models.backbone import TINY_BACKBONES, BackboneWithFPN, build_backbone
from detectors.models.box_coders import BoxCoder, DeltaCoder, LogSideCoder, SideCoder
from detectors.models.dense import DenseDetector, PostprocessParams, QualityBranch
from detectors.models.head import DenseHead
from detectors.models.matcher import HungarianMatcher
from detectors.models.paa import PAA
from detectors.models.retinanet import RetinaNet
from detectors.models.sparse_rcnn import SparseRCNN, SparseRCNNHead
from detectors.postprocess import NMS, NMS_METHODS

# What build_detector returns: a dense detector, or the set predictor Sparse R-CNN.
Detector = DenseDetector | SparseRCNN

# ------------------------------------------------------------ what each slot member reads
# member name -> {constructor argument: the config key it takes}, next to each slot's table.
ASSIGNER_SETTINGS: dict[str, dict[str, str]] = {
    "max_iou": {
        "fg_iou": "assign.fg_iou",
        "bg_iou": "assign.bg_iou",
        "allow_low_quality_matches": "model.low_quality_matches",
    },
    "iac": {
        "fg_iou": "assign.fg_iou",
        "bg_iou": "assign.bg_iou",
        "allow_low_quality_matches": "model.low_quality_matches",
        "alpha": "assign.alpha",
        "score_thr": "assign.score_thr",
        "form": "assign.form",
        "warmup_iters": "assign.warmup_iters",
    },
    "atss": {"topk": "model.atss_topk"},
    "fcos": {"center_sampling_radius": "model.center_sampling_radius"},
    "fovea": {"sigma": "model.fovea_sigma"},
    "paa": {
        "topk": "model.paa_topk",
        "focal_alpha": "loss.focal_alpha",
        "focal_gamma": "loss.focal_gamma",
    },
}
CLS_LOSS_SETTINGS: dict[str, dict[str, str]] = {
    "focal": {"alpha": "loss.focal_alpha", "gamma": "loss.focal_gamma"},
    "qfl": {"beta": "loss.cls.qfl_beta"},
    "vfl": {"alpha": "loss.cls.vfl_alpha", "gamma": "loss.cls.vfl_gamma"},
    "rs": {"delta": "loss.cls.rs_delta"},
}
CORRELATION_SETTINGS: dict[str, dict[str, str]] = {
    "pearson": {},
    "concordance": {"ddof": "loss.corr.ddof"},
    "spearman": {"strength": "loss.corr.strength", "strength_mode": "loss.corr.strength_mode"},
}
NMS_SETTINGS: dict[str, dict[str, str]] = {
    "greedy": {"iou_threshold": "nms.iou_threshold"},
    "soft": {
        "iou_threshold": "nms.iou_threshold",
        "sigma": "nms.soft_sigma",
        "method": "nms.soft_method",
    },
    "cl_balanced": {"iou_threshold": "nms.iou_threshold", "beta": "nms.beta"},
}
# ResNet trunks read these; the tiny CNN has no weights to load and no stages to freeze.
TRUNK_SETTINGS = {
    "pretrained": "model.pretrained",
    "frozen_stages": "model.frozen_stages",
    "frozen_bn": "model.frozen_bn",
}


def _check_tables() -> None:
    """Every member of a slot table says what it reads (fails loudly at import)."""
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = [
        (ASSIGNERS, ASSIGNER_SETTINGS),
        (CLASSIFICATION_LOSSES, CLS_LOSS_SETTINGS),
        (CORRELATIONS, CORRELATION_SETTINGS),
        (NMS_METHODS, NMS_SETTINGS),
    ]
    for table, settings in pairs:
        if set(table) != set(settings):
            raise RuntimeError(f"slot members {sorted(table)} != settings {sorted(settings)}")


_check_tables()


def value(cfg: ExperimentConfig, key: str) -> Any:
    """The value of dotted ``key`` (``"assign.fg_iou"``) in ``cfg``."""
    return functools.reduce(getattr, key.split("."), cfg)


def _arguments(cfg: ExperimentConfig, settings: Mapping[str, str]) -> dict[str, Any]:
    return {argument: value(cfg, key) for argument, key in settings.items()}


# ------------------------------------------------------------------------- the slots
@dataclass(frozen=True, kw_only=True)
class Parts:
    """The objects every detector's builder receives: the backbone, the correlation slot
    and, for dense heads, the other slots (None for set predictors)."""

    backbone: BackboneWithFPN
    num_classes: int
    correlation: CorrelationLoss
    assigner: Assigner | None = None
    cls_loss: ElementwiseClassificationLoss | RankSortLoss | None = None
    dc: DCWeighting | None = None
    nms: NMS | None = None
    post: PostprocessParams | None = None


def assigner_name(cfg: ExperimentConfig) -> str:
    """The assigner ``cfg`` uses: IAC when asked (on an anchor-based head), else the
    detector's own rule."""
    spec = DETECTORS[cfg.model.name]
    if spec.anchor_based and cfg.assign.kind == "iac":
        return "iac"
    assert spec.assigner is not None, f"{cfg.model.name} has no assigner"
    return spec.assigner


def build_assigner(cfg: ExperimentConfig) -> Assigner:
    name = assigner_name(cfg)
    return ASSIGNERS[name](**_arguments(cfg, ASSIGNER_SETTINGS[name]))


def build_nms(cfg: ExperimentConfig) -> NMS:
    kind = cfg.nms.kind
    return NMS_METHODS[kind](**_arguments(cfg, NMS_SETTINGS[kind]))


def build_correlation(cfg: ExperimentConfig) -> CorrelationLoss:
    c = cfg.loss.corr
    # At λ = 0 nothing is trained (ρ is only logged): the gradient's options mean nothing.
    trained: dict[str, Any] = {"grad_to": c.grad_to, "sync": c.sync} if c.weight > 0 else {}
    return CorrelationLoss(
        coefficient=CORRELATIONS[c.kind],
        weight=c.weight,
        pool=c.pool,
        **_arguments(cfg, CORRELATION_SETTINGS[c.kind]),
        **trained,
    )


def _focal(cfg: ExperimentConfig) -> FocalLoss:
    loss = CLASSIFICATION_LOSSES["focal"](**_arguments(cfg, CLS_LOSS_SETTINGS["focal"]))
    assert isinstance(loss, FocalLoss)
    return loss


def build_cls_loss(cfg: ExperimentConfig) -> ElementwiseClassificationLoss | RankSortLoss:
    kind = cfg.loss.cls.kind
    return CLASSIFICATION_LOSSES[kind](**_arguments(cfg, CLS_LOSS_SETTINGS[kind]))


def is_elementwise(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s classification loss scores each (location, class) on its own (the
    others, RS Loss, rank them all at once: no per-positive loss for DC, no num_pos)."""
    return issubclass(CLASSIFICATION_LOSSES[cfg.loss.cls.kind], ElementwiseClassificationLoss)


def quality_kind(cfg: ExperimentConfig) -> str:
    """The quality branch ``cfg`` trains: ``none``, ``centerness`` or ``iou``. ``native`` is
    the detector's own, and none under a classification loss that learns the quality itself
    (its targets are IoUs: QFL, VFL, RS), as GFL, VarifocalNet and RS-Net do."""
    chosen = cfg.model.quality
    if chosen != "native":
        return chosen
    if CLASSIFICATION_LOSSES[cfg.loss.cls.kind].uses_iou_targets:
        return "none"
    return DETECTORS[cfg.model.name].quality


def build_quality(cfg: ExperimentConfig) -> QualityBranch | None:
    kind = quality_kind(cfg)
    if kind == "none":
        return None
    m = cfg.model
    target: Literal["centerness", "iou"] = "iou" if kind == "iou" else "centerness"
    # PAA's IoU branch has its own weight (the reference's 0.5); the others' BCE weighs 1.
    weight = m.paa_iou_weight if m.name == "paa" and target == "iou" else 1.0
    return QualityBranch(target=target, loss_weight=weight, alpha=m.quality_alpha)


def _backbone(cfg: ExperimentConfig) -> BackboneWithFPN:
    m = cfg.model
    trunk = {} if m.backbone in TINY_BACKBONES else _arguments(cfg, TRUNK_SETTINGS)
    return build_backbone(
        m.backbone,
        pretrained=trunk.pop("pretrained", ""),
        fpn_channels=m.fpn_channels,
        min_level=m.min_level,
        max_level=m.max_level,
        **trunk,
    )


def _parts(cfg: ExperimentConfig, num_classes: int) -> Parts:
    backbone, correlation = _backbone(cfg), build_correlation(cfg)
    if not DETECTORS[cfg.model.name].dense:
        return Parts(backbone=backbone, num_classes=num_classes, correlation=correlation)
    n, dc = cfg.nms, cfg.loss.dc
    return Parts(
        backbone=backbone,
        num_classes=num_classes,
        correlation=correlation,
        assigner=build_assigner(cfg),
        cls_loss=build_cls_loss(cfg),
        # DC weights each positive's own classification loss: element-wise losses only.
        dc=DCWeighting(eps=dc.eps, normalize=dc.normalize)
        if is_elementwise(cfg) and dc.enabled
        else None,
        nms=build_nms(cfg),
        post=PostprocessParams(
            score_threshold=n.score_threshold,
            pre_nms_topk=n.pre_nms_topk,
            max_detections=n.max_detections,
        ),
    )


# --------------------------------------------------------------------- the detectors
def _head(cfg: ExperimentConfig, parts: Parts, *, num_anchors: int, scaled: bool) -> DenseHead:
    m = cfg.model
    return DenseHead(
        in_channels=m.fpn_channels,
        num_anchors=num_anchors,
        num_classes=parts.num_classes,
        num_convs=m.head_convs,
        norm=m.norm,
        prior_prob=m.prior_prob,
        quality=quality_kind(cfg) != "none",
        level_scales=len(parts.backbone.levels) if scaled else 0,
    )


def _square_locations(parts: Parts, scale: float) -> AnchorGenerator:
    """One square location per cell, ``scale · stride`` wide (ATSS's anchors, FCOS's cells)."""
    return AnchorGenerator(
        levels=parts.backbone.levels, anchor_scale=scale, ratios=(1.0,), scales_per_octave=1
    )


def _box_loss(cfg: ExperimentConfig) -> tuple[RegressionLoss, float]:
    """The detector's box loss and its weight: RS-Net balances it by value instead (the
    weight is then 1, unused)."""
    spec = DETECTORS[cfg.model.name]
    loss = REGRESSION_LOSSES[spec.box_loss or cfg.loss.reg]
    return loss, 1.0 if not is_elementwise(cfg) else float(value(cfg, spec.box_weight))


def _dense(
    cls: type[DenseDetector],
    cfg: ExperimentConfig,
    parts: Parts,
    *,
    head: DenseHead,
    locations: AnchorGenerator,
    box_coder: BoxCoder,
) -> DenseDetector:
    assert parts.assigner and parts.cls_loss and parts.nms and parts.post
    box_loss, box_weight = _box_loss(cfg)
    return cls(
        backbone=parts.backbone,
        head=head,
        anchor_generator=locations,
        box_coder=box_coder,
        assigner=parts.assigner,
        num_classes=parts.num_classes,
        cls_loss=parts.cls_loss,
        box_loss=box_loss,
        box_weight=box_weight,
        quality=build_quality(cfg),
        correlation=parts.correlation,
        dc=parts.dc,
        nms=parts.nms,
        post=parts.post,
    )


def _retinanet(cfg: ExperimentConfig, parts: Parts) -> DenseDetector:
    m = cfg.model
    anchors = AnchorGenerator(
        levels=parts.backbone.levels,
        anchor_scale=m.anchor_scale,
        ratios=m.anchor_ratios,
        scales_per_octave=m.scales_per_octave,
    )
    return _dense(
        RetinaNet,
        cfg,
        parts,
        head=_head(cfg, parts, num_anchors=anchors.num_anchors, scaled=False),
        locations=anchors,
        box_coder=DeltaCoder(),
    )


def _atss(cfg: ExperimentConfig, parts: Parts) -> DenseDetector:
    return _dense(
        atss.ATSS,
        cfg,
        parts,
        head=_head(cfg, parts, num_anchors=1, scaled=True),
        locations=_square_locations(parts, atss.ANCHOR_SCALE),
        box_coder=DeltaCoder(weights=atss.DELTA_WEIGHTS),
    )


def _fcos(cfg: ExperimentConfig, parts: Parts) -> DenseDetector:
    return _dense(
        fcos.FCOS,
        cfg,
        parts,
        head=_head(cfg, parts, num_anchors=1, scaled=True),
        locations=_square_locations(parts, fcos.CELL_SCALE),
        box_coder=SideCoder(),
    )


def _foveabox(cfg: ExperimentConfig, parts: Parts) -> DenseDetector:
    return _dense(
        foveabox.FoveaBox,
        cfg,
        parts,
        head=_head(cfg, parts, num_anchors=1, scaled=True),
        locations=_square_locations(parts, fcos.CELL_SCALE),
        box_coder=LogSideCoder(base_edge=foveabox.BASE_EDGE, target_clamp=foveabox.TARGET_CLAMP),
    )


def _paa(cfg: ExperimentConfig, parts: Parts) -> PAA:
    assert parts.assigner and parts.cls_loss and parts.nms and parts.post
    box_loss, box_weight = _box_loss(cfg)
    return PAA(
        backbone=parts.backbone,
        head=_head(cfg, parts, num_anchors=1, scaled=True),
        anchor_generator=_square_locations(parts, atss.ANCHOR_SCALE),
        box_coder=DeltaCoder(weights=atss.DELTA_WEIGHTS),
        assigner=parts.assigner,
        num_classes=parts.num_classes,
        cls_loss=parts.cls_loss,
        box_loss=box_loss,
        box_weight=box_weight,
        quality=build_quality(cfg),
        correlation=parts.correlation,
        dc=parts.dc,
        nms=parts.nms,
        post=parts.post,
        score_voting=cfg.model.paa_score_voting,
    )


def _sparse_rcnn(cfg: ExperimentConfig, parts: Parts) -> SparseRCNN:
    m, s, loss = cfg.model, cfg.model.sparse, cfg.loss
    head = SparseRCNNHead(
        levels=parts.backbone.levels,
        num_classes=parts.num_classes,
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
        backbone=parts.backbone,
        head=head,
        matcher=matcher,
        num_classes=parts.num_classes,
        cls_loss=_focal(cfg),
        cls_weight=loss.sparse.cls_weight,
        l1_weight=loss.sparse.l1_weight,
        giou_weight=loss.sparse.giou_weight,
        correlation=parts.correlation,
        max_detections=cfg.nms.max_detections,
    )


def _sparse_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    heads = cfg.model.sparse.attention_heads
    problems = []
    if cfg.loss.corr.pool == "level":
        problems.append(
            ("loss.corr.pool", "sparse_rcnn has no FPN-level pools; use batch or image")
        )
    if cfg.model.fpn_channels % heads:
        problems.append(
            ("model.fpn_channels", f"must be divisible by model.sparse.attention_heads ({heads})")
        )
    return problems


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """One row of :data:`DETECTORS`: how the detector is built from its parts, and what it
    reads besides the backbone's settings and its slots' members'."""

    build: Callable[[ExperimentConfig, Parts], Detector]
    reads: tuple[str, ...]  # its own settings (its head, locations, box loss, branches)
    assigner: str | None  # its own rule, a name of ASSIGNERS; None: no assigner (and no
    # dense-head slot: classification loss, DC, NMS), as for a set predictor
    anchor_based: bool = False  # its locations are anchor boxes: IAC (an anchor-IoU rule) applies
    quality: str = "none"  # its own quality branch (model.quality=native): centerness, iou
    box_loss: str | None = None  # its box loss when fixed (a name of REGRESSION_LOSSES);
    # None: loss.reg
    box_weight: str = "loss.reg_weight"  # the setting that weights its box loss
    # Why a setting it does not read means nothing to it (the default message names the
    # detectors that do read it).
    ignores: Mapping[str, str] = field(default_factory=dict)
    problems: Callable[[ExperimentConfig], list[tuple[str, str]]] = lambda cfg: []

    @property
    def dense(self) -> bool:
        return self.assigner is not None


_HEAD = ("model.head_convs", "model.norm")  # every dense head's towers
_NO_ANCHORS = "iac needs an anchor-based detector (retinanet, atss, paa); {} has no anchors"
_ATSS_ANCHORS = "its anchors are one square of 8 · stride per location"
_CELLS = "its locations are stride-sized cells around points"

DETECTORS: dict[str, DetectorSpec] = {
    "retinanet": DetectorSpec(
        build=_retinanet,
        reads=(*_HEAD, "model.anchor_scale", "model.anchor_ratios", "model.scales_per_octave"),
        assigner="max_iou",
        anchor_based=True,
    ),
    "atss": DetectorSpec(
        build=_atss,
        reads=_HEAD,
        assigner="atss",
        anchor_based=True,
        quality="centerness",
        ignores=dict.fromkeys(
            ("model.anchor_scale", "model.anchor_ratios", "model.scales_per_octave"),
            _ATSS_ANCHORS,
        ),
    ),
    "fcos": DetectorSpec(
        build=_fcos,
        reads=_HEAD,
        assigner="fcos",
        quality="centerness",
        ignores={
            "assign.kind": _NO_ANCHORS.format("fcos"),
            **dict.fromkeys(
                ("model.anchor_scale", "model.anchor_ratios", "model.scales_per_octave"), _CELLS
            ),
        },
    ),
    "foveabox": DetectorSpec(
        build=_foveabox,
        reads=_HEAD,
        assigner="fovea",
        ignores={
            "assign.kind": _NO_ANCHORS.format("foveabox"),
            **dict.fromkeys(
                ("model.anchor_scale", "model.anchor_ratios", "model.scales_per_octave"), _CELLS
            ),
        },
    ),
    "paa": DetectorSpec(
        build=_paa,
        reads=(*_HEAD, "model.paa_score_voting"),
        assigner="paa",
        anchor_based=True,
        quality="iou",
        box_loss="giou",  # its anchor scores are defined with it
        box_weight="model.paa_reg_weight",
        ignores={
            "loss.reg": "its box loss is always GIoU (its anchor scores are defined with it; "
            "model.paa_reg_weight weights it)",
            "loss.reg_weight": "its box loss is weighted by model.paa_reg_weight",
            **dict.fromkeys(
                ("model.anchor_scale", "model.anchor_ratios", "model.scales_per_octave"),
                _ATSS_ANCHORS,
            ),
        },
    ),
    "sparse_rcnn": DetectorSpec(
        build=_sparse_rcnn,
        reads=(
            "model.num_proposals",
            "model.num_stages",
            *(
                f"model.sparse.{k}"
                for k in (
                    "attention_heads",
                    "ffn_multiplier",
                    "dynamic_divisor",
                    "cls_fcs",
                    "reg_fcs",
                    "pooler_resolution",
                    "sampling_ratio",
                    "dropout",
                )
            ),
            "loss.sparse.cls_weight",
            "loss.sparse.l1_weight",
            "loss.sparse.giou_weight",
            "loss.focal_alpha",
            "loss.focal_gamma",
        ),
        assigner=None,
        ignores={
            "loss.dc.enabled": "the DC loss needs a dense head",
            "loss.cls.kind": "its set loss is focal loss (loss.focal_alpha, loss.focal_gamma)",
            "nms.kind": "sparse_rcnn is NMS-free (no NMS runs)",
            "assign.kind": "it matches predictions to objects one to one (Hungarian matching)",
        },
        problems=_sparse_problems,
    ),
}


def assemble_detector(cfg: ExperimentConfig, num_classes: int) -> Detector:
    """The detector ``cfg`` describes, for ``num_classes`` classes, without the settings
    check (``detectors.models.build_detector`` runs :func:`~detectors.models.reads.
    check_settings` first)."""
    return DETECTORS[cfg.model.name].build(cfg, _parts(cfg, num_classes))
