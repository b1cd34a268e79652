"""Config -> detector, in one place, and which settings each choice reads.

``build_detector(cfg, num_classes)`` is the only function that turns config values into
objects. Every slot resolves its member from the slot's own table (``ASSIGNERS``,
``CLASSIFICATION_LOSSES``, ``REGRESSION_LOSSES``, ``CORRELATIONS``, ``NMS_METHODS``), with the
member's constructor arguments taken from the settings named next to it here
(``ASSIGNER_SETTINGS``...); the detector's own parts (head, locations, box coder) come from
its row of ``DETECTORS``. Everything below takes objects.

The same declarations say what a config reads: :func:`settings_read` is the union of what
the chosen detector and slot members read, so adding a detector or a member means saying
what it reads (a ``DetectorSpec`` has no default for it, and a table member without its
settings fails at import). :func:`check_settings` refuses a setting that differs from its
default while nothing chosen reads it (a sweep over it would run identical trials), and
the combinations that mean nothing; ``build_detector`` runs it first, and the orchestrator
runs it on every planned trial without building anything. ``tests/detectors/models/
test_settings.py`` builds every detector through a config that records what is read, and
checks that it is exactly what is declared.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from detectors.assigners import ASSIGNERS, Assigner
from detectors.config import ConfigError, ExperimentConfig, flatten
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
from detectors.models import atss, fcos, foveabox
from detectors.models.anchors import AnchorGenerator
from detectors.models.backbone import BackboneWithFPN, build_backbone
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
    trunk = {} if m.backbone == "tiny" else _arguments(cfg, TRUNK_SETTINGS)
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


# ---------------------------------------------------------------- what a config reads
# Settings of these sections configure the detector and its methods: each must be read by
# what the config chooses, or keep its default. (data.*, train.*, fit.* are read by every
# run.)
CHECKED_SECTIONS = ("model.", "assign.", "loss.", "nms.")

# Read by every detector.
COMMON_READS = (
    "model.name",
    "model.backbone",
    "model.fpn_channels",
    "model.min_level",
    "model.max_level",
    "model.prior_prob",
    "nms.max_detections",
    "loss.corr.weight",
    "loss.corr.kind",
    "loss.corr.pool",
)


@dataclass(frozen=True, kw_only=True)
class Choice:
    """One choice a config makes (a detector, a slot's member, a switch left off) and the
    settings it reads: a setting in ``scope`` that it does not read is explained as
    ``not used by {name}: {why(key)}``."""

    name: str  # as the message names it: "model.name=atss", "nms.kind=greedy"
    reads: tuple[str, ...]
    scope: frozenset[str]  # the settings some other choice here would read
    why: Callable[[str], str]


def _keys(*tables: Iterable[Mapping[str, str]]) -> frozenset[str]:
    return frozenset(key for table in tables for settings in table for key in settings.values())


def _only(names: list[str]) -> str:
    if not names:
        return "nothing reads it here"
    return f"only {', '.join(names)} read{'s' if len(names) == 1 else ''} it"


def _readers(key: str, settings: Mapping[str, Mapping[str, str]]) -> str:
    return _only([name for name, table in settings.items() if key in table.values()])


def _listed(keys: Iterable[str]) -> str:
    keys = list(keys)
    return ", ".join(keys) if keys else "no setting"


def _label(assigner: str) -> str:
    return ASSIGNERS[assigner].__name__.removesuffix("Assigner")


def _box_readers(key: str) -> list[str]:
    """The dense detectors whose box loss reads ``key``."""
    return [
        name
        for name, spec in DETECTORS.items()
        if spec.dense and (key == spec.box_weight or (key == "loss.reg" and not spec.box_loss))
    ]


_BOX_SETTINGS = frozenset({"loss.reg", "loss.reg_weight", "model.paa_reg_weight"})
_DC_SETTINGS = frozenset({"loss.dc.enabled", "loss.dc.eps", "loss.dc.normalize"})
_QUALITY_SETTINGS = frozenset({"model.quality", "model.quality_alpha"})


def choices(cfg: ExperimentConfig) -> list[Choice]:
    """What ``cfg`` chooses, each with the settings it reads (see :class:`Choice`)."""
    m, c = cfg.model, cfg.loss.corr
    spec = DETECTORS[m.name]
    detector = f"model.name={m.name}"
    out = [
        Choice(
            name=f"model.backbone={m.backbone}",
            reads=() if m.backbone == "tiny" else tuple(TRUNK_SETTINGS.values()),
            scope=frozenset(TRUNK_SETTINGS.values()),
            why=lambda key: "the tiny CNN has no pretrained weights and no stages to freeze",
        ),
        Choice(
            name=f"loss.corr.kind={c.kind}",
            reads=tuple(CORRELATION_SETTINGS[c.kind].values()),
            scope=_keys(CORRELATION_SETTINGS.values()),
            why=lambda key: _readers(key, CORRELATION_SETTINGS),
        ),
        Choice(
            name="loss.corr.weight=0",
            reads=("loss.corr.grad_to", "loss.corr.sync") if c.weight > 0 else (),
            scope=frozenset({"loss.corr.grad_to", "loss.corr.sync"}),
            why=lambda key: "no correlation loss is trained (its coefficient is only logged)",
        ),
    ]
    dense_scope = (
        _keys(ASSIGNER_SETTINGS.values(), NMS_SETTINGS.values(), CLS_LOSS_SETTINGS.values())
        | {"assign.kind", "nms.kind", "nms.score_threshold", "nms.pre_nms_topk"}
        | {"loss.cls.kind"}
        | _BOX_SETTINGS
        | _DC_SETTINGS
        | _QUALITY_SETTINGS
    )
    # The detector's own settings last: a setting of a slot is explained by the slot.
    own = [
        Choice(
            name=detector,
            reads=(*COMMON_READS, *spec.reads),
            scope=frozenset(k for s in DETECTORS.values() for k in s.reads),
            why=lambda key: (
                spec.ignores.get(key)
                or _only([n for n, other in DETECTORS.items() if key in other.reads])
            ),
        ),
    ]
    if not spec.dense:
        not_dense = Choice(
            name=detector,
            reads=(),
            scope=dense_scope - set(spec.reads),
            why=lambda key: spec.ignores.get(key, "it is not a dense head"),
        )
        return [*out, not_dense, *own]
    return out + _dense_choices(cfg, spec) + own


def _dense_choices(cfg: ExperimentConfig, spec: DetectorSpec) -> list[Choice]:
    m, kind = cfg.model, cfg.loss.cls.kind
    detector = f"model.name={m.name}"
    out = []
    if not is_elementwise(cfg):
        out.append(
            Choice(
                name=f"loss.cls.kind={kind}",
                reads=(),
                scope=_DC_SETTINGS | {spec.box_weight},
                why=lambda key: (
                    "RS-Net balances the box loss by its value (λ_box = L_RS / L_box, every step)"
                    if key == spec.box_weight
                    else "RS Loss ranks every (location, class) pair at once: there is no "
                    "per-positive classification loss for DC to weight"
                ),
            )
        )
    assigner = assigner_name(cfg)
    with_iac = " with assign.kind=iac" if assigner == "iac" else ""
    assigner_reads = tuple(ASSIGNER_SETTINGS[assigner].values())
    dc = cfg.loss.dc
    quality = quality_kind(cfg)
    quality_name = f"model.quality={m.quality}"
    if m.quality == "native" and quality != spec.quality:
        quality_name += f" (none: loss.cls.kind={kind} learns the quality itself)"
    return [
        *out,
        Choice(
            name=f"loss.cls.kind={kind}",
            reads=("loss.cls.kind", *CLS_LOSS_SETTINGS[kind].values()),
            scope=_keys(CLS_LOSS_SETTINGS.values()),
            why=lambda key: _readers(key, CLS_LOSS_SETTINGS),
        ),
        Choice(
            name=detector + with_iac,
            reads=(*assigner_reads, *(("assign.kind",) if spec.anchor_based else ())),
            scope=_keys(ASSIGNER_SETTINGS.values()) | {"assign.kind"},
            why=lambda key: (
                spec.ignores.get(key)
                or f"its assigner is {_label(assigner)} ({_listed(assigner_reads)})"
            ),
        ),
        Choice(
            name=detector,
            reads=(
                *(() if spec.box_loss else ("loss.reg",)),
                *((spec.box_weight,) if is_elementwise(cfg) else ()),
            ),
            scope=_BOX_SETTINGS,
            why=lambda key: spec.ignores.get(key) or _only(_box_readers(key)),
        ),
        Choice(
            name=f"nms.kind={cfg.nms.kind}",
            reads=(
                "nms.kind",
                "nms.score_threshold",
                "nms.pre_nms_topk",
                *NMS_SETTINGS[cfg.nms.kind].values(),
            ),
            scope=_keys(NMS_SETTINGS.values()),
            why=lambda key: _readers(key, NMS_SETTINGS),
        ),
        Choice(
            name="loss.dc.enabled=false",
            reads=(
                ("loss.dc.enabled", *(("loss.dc.eps", "loss.dc.normalize") if dc.enabled else ()))
                if is_elementwise(cfg)
                else ()
            ),
            scope=_DC_SETTINGS - {"loss.dc.enabled"},
            why=lambda key: "the DC loss is off",
        ),
        Choice(
            name=quality_name,
            reads=("model.quality", *(("model.quality_alpha",) if quality != "none" else ())),
            scope=_QUALITY_SETTINGS,
            why=lambda key: "there is no quality branch to score with",
        ),
        Choice(
            name=quality_name if m.name == "paa" else detector,
            reads=("model.paa_iou_weight",) if m.name == "paa" and quality == "iou" else (),
            scope=frozenset({"model.paa_iou_weight"}),
            why=lambda key: "PAA has no IoU branch" if m.name == "paa" else _only(["paa"]),
        ),
    ]


def settings_read(cfg: ExperimentConfig) -> frozenset[str]:
    """Every setting of :data:`CHECKED_SECTIONS` that what ``cfg`` chooses reads."""
    return frozenset(key for choice in choices(cfg) for key in choice.reads)


def unused_settings(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``(key, why)`` for every checked setting that differs from its default while nothing
    ``cfg`` chooses reads it, in the config's order."""
    read = settings_read(cfg)
    defaults, values = flatten(ExperimentConfig()), flatten(cfg)
    found = []
    for key, default in defaults.items():
        if not key.startswith(CHECKED_SECTIONS) or key in read or values[key] == default:
            continue
        chosen = choices(cfg)
        # The first choice that could read it explains; else the detector (the last).
        owner = next((c for c in chosen if key in c.scope), chosen[-1])
        found.append((key, f"not used by {owner.name}: {owner.why(key)}"))
    return found


def setting_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``(key, problem)``: every setting nothing reads, then every combination that means
    nothing, for the chosen detector and methods."""
    return unused_settings(cfg) + DETECTORS[cfg.model.name].problems(cfg)


def check_settings(
    cfg: ExperimentConfig, sources: Mapping[str, str] | None = None, default_source: str = ""
) -> None:
    """Raise :class:`ConfigError` on the first of :func:`setting_problems` (naming how many
    more there are); its source is ``sources[key]`` (where the value came from), else
    ``default_source``. Cheap: builds nothing."""
    problems = setting_problems(cfg)
    if not problems:
        return
    key, problem = problems[0]
    if len(problems) > 1:
        others = ", ".join(k for k, _ in problems[1:])
        problem += f" (and {len(problems) - 1} more: {others})"
    raise ConfigError((sources or {}).get(key, default_source), key, problem)


# ------------------------------------------------------------------------- the builder
def build_detector(cfg: ExperimentConfig, num_classes: int) -> Detector:
    """The detector ``cfg`` describes, for ``num_classes`` classes; refuses (ConfigError) a
    setting the detector would not read and a combination that means nothing."""
    check_settings(cfg)
    return assemble_detector(cfg, num_classes)


def assemble_detector(cfg: ExperimentConfig, num_classes: int) -> Detector:
    """:func:`build_detector` without the settings check (for checking the check)."""
    return DETECTORS[cfg.model.name].build(cfg, _parts(cfg, num_classes))
