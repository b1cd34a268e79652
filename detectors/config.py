"""Typed, frozen experiment configuration: the one object turned into a model, a loss and
a post-processor, the same object (flattened) that MLflow logs and that a sweep varies.

A config is composed from a preset (``detectors/presets/<name>.yaml``), an optional YAML
file and ``dotted.key=value`` overrides, in that order. Unknown keys, wrong types and
impossible values raise :class:`ConfigError`, which names the source, the key and the
problem in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A user-caused configuration problem: ``source: key: problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0  # generator seed: the same seed gives the same images, byte for byte
    num_train: int = 512  # training images
    num_val: int = 128  # validation images
    image_size: int = 128  # generated images are square, this many pixels
    max_objects: int = 6  # objects per image, at most


@dataclass(frozen=True)
class SplitFilesConfig:
    """The files of one split, for a layout that is not detected ("" = found from data.root
    and the split's name). Relative paths are relative to data.root (to the working folder
    when data.root is empty)."""

    ann_file: str = ""  # coco: the annotation JSON
    # coco: the folder the JSON's file_name entries are relative to (default: found near
    # the JSON); yolo: an image folder or .txt image list (labels: .../images/ -> .../labels/)
    images: str = ""


@dataclass(frozen=True)
class DataConfig:
    kind: Literal["synthetic", "coco", "voc", "yolo"] = "synthetic"
    # Dataset folder, or the COCO JSON / YOLO YAML itself (`corrtune data check` shows what
    # it finds there); synthetic: the cache folder ("" = ./.corrtune/data).
    root: str = ""
    # A split of the dataset (voc: ImageSets/Main/<name>.txt; coco: the JSON's stem without
    # instances_, or the export's split folder; yolo: a key of its YAML), or a path.
    train_split: str = "train"
    val_split: str = "val"
    train: SplitFilesConfig = field(default_factory=SplitFilesConfig)  # when set, wins
    val: SplitFilesConfig = field(default_factory=SplitFilesConfig)
    classes: tuple[str, ...] = ()  # class list (label order); () = the dataset's own
    image_size: int = 128  # longer image side after resizing, pixels
    num_workers: int = 0  # DataLoader worker processes per training worker
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SparseHeadConfig:
    """Sparse R-CNN's iterative head (Sun et al. 2021). Its width is ``model.fpn_channels``
    (256 in the paper); the defaults give the paper's 2048-wide FFN and 64-wide dynamic conv."""

    attention_heads: int = 8  # heads of the self-attention among proposals (divide the width)
    ffn_multiplier: int = 8  # FFN hidden width = ffn_multiplier x fpn_channels
    dynamic_divisor: int = 4  # dynamic-conv bottleneck = fpn_channels // dynamic_divisor
    cls_fcs: int = 1  # Linear-LayerNorm-ReLU blocks in the classification tower
    reg_fcs: int = 3  # Linear-LayerNorm-ReLU blocks in the box tower
    pooler_resolution: int = 7  # RoIAlign output side
    sampling_ratio: int = 2  # RoIAlign sampling points per bin side
    dropout: float = 0.0  # attention, dynamic conv and FFN (the reference moved 0.1 -> 0.0)


@dataclass(frozen=True)
class ModelConfig:
    # Detector (SPEC §2.5): anchor-based retinanet, atss, paa; point-based fcos, foveabox;
    # the NMS-free set predictor sparse_rcnn.
    name: Literal["retinanet", "atss", "fcos", "foveabox", "paa", "sparse_rcnn"] = "retinanet"
    backbone: Literal[
        "tiny", "tiny_fast", "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d"
    ] = "resnet18"
    pretrained: str = ""  # "" = random init; a path to a state dict; or a torchvision weight name
    frozen_stages: int = -1  # ResNets: -1 trains all; 0 freezes the stem; k also layers 1..k
    frozen_bn: bool = False  # ResNets: BatchNorm with fixed statistics and affine (as papers)
    # Localization-quality branch of the dense heads (SPEC §2.5): trained with BCE on the
    # positives, multiplied into the test-time score as p^(1-α)·q^α. native: the detector's
    # own (centerness on atss and fcos, iou on paa, none on retinanet and foveabox), and none
    # with an IoU-aware classification loss (loss.cls.kind qfl, vfl, rs), whose scores are
    # the quality (GFL, VarifocalNet and RS-Net drop the branch).
    quality: Literal["native", "none", "centerness", "iou"] = "native"
    # α of p^(1-α)·q^α; 0.5 is sqrt(p·q): FCOS's, ATSS's, PAA's and IoU-aware RetinaNet's
    # (Wu et al. 2020, its released code) test-time score.
    quality_alpha: float = 0.5
    center_sampling_radius: float = 1.5  # fcos: positives within r·stride of the centre; 0 off
    atss_topk: int = 9  # atss: candidate anchors per level per ground truth
    fovea_sigma: float = 0.4  # foveabox: positive area = box shrunk by sigma about its centre
    paa_topk: int = 9  # paa: candidate anchors per level per ground truth (lowest loss first)
    paa_score_voting: bool = True  # paa: boxes after NMS = score-weighted votes of candidates
    paa_reg_weight: float = 1.3  # paa: weight of its IoU-weighted GIoU loss (loss.reg unused)
    paa_iou_weight: float = 0.5  # paa: weight of the IoU-prediction BCE loss
    fpn_channels: int = 64  # channels of every FPN level and of the head
    head_convs: int = 2  # conv layers in each head tower (RetinaNet uses 4)
    min_level: int = 3  # finest FPN level (stride 2**min_level)
    max_level: int = 6  # coarsest FPN level
    anchor_scale: float = 4.0  # anchor size = anchor_scale * stride
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    scales_per_octave: int = 3
    low_quality_matches: bool = True  # every ground truth keeps its best anchor
    prior_prob: float = 0.01  # initial foreground probability of the classifier bias
    norm: Literal["group", "none"] = "group"  # normalization in the head towers
    num_proposals: int = 100  # sparse_rcnn: learnable proposal boxes and features per image
    num_stages: int = 6  # sparse_rcnn: iterative heads, each refining the previous boxes
    sparse: SparseHeadConfig = field(default_factory=SparseHeadConfig)  # sparse_rcnn head


@dataclass(frozen=True)
class AssignConfig:
    kind: Literal["max_iou", "iac"] = "max_iou"
    fg_iou: float = 0.5  # IoU at or above which an anchor is positive
    bg_iou: float = 0.4  # IoU below which an anchor is negative
    alpha: float = 0.75  # IAC: weight of the classification probability in the score
    score_thr: float = 0.5  # IAC: score at or above which an anchor is recalled as positive
    form: Literal["geometric", "arithmetic"] = "geometric"  # IAC score form
    warmup_iters: int = 0  # IAC: iterations of plain max-IoU before recall starts


@dataclass(frozen=True)
class CorrLossConfig:
    weight: float = 0.0  # λ_corr; 0 disables the loss
    kind: Literal["pearson", "concordance", "spearman"] = "concordance"
    strength: float = 1.0  # Spearman: torchsort regularization strength ε
    strength_mode: Literal["absolute", "relative"] = "absolute"  # relative: ε scaled to the pool
    ddof: Literal[0, 1] = 0  # Concordance moments: 0 population, 1 unbiased (reference code)
    pool: Literal["batch", "level", "image"] = "batch"  # positives sharing one coefficient
    sync: bool = False  # pool across DDP workers (all-gather keeping the gradient)
    grad_to: Literal["cls", "reg", "both"] = "cls"  # which branch the gradient reaches


@dataclass(frozen=True)
class DCConfig:
    enabled: bool = False  # weight positives' classification loss by localization quality
    eps: float = 0.1  # keeps λ = 1 / (e + ε) finite for perfect boxes
    normalize: bool = True  # rescale so the positives' classification loss keeps its value


@dataclass(frozen=True)
class SparseLossConfig:
    """Sparse R-CNN's set loss, per stage, normalised by the number of ground truths. The
    Hungarian matcher uses the same three weights as its costs (as the reference does)."""

    cls_weight: float = 2.0  # sigmoid focal loss (loss.focal_alpha, loss.focal_gamma)
    l1_weight: float = 5.0  # L1 between boxes divided by the image's [w, h, w, h]
    giou_weight: float = 2.0  # 1 - GIoU


@dataclass(frozen=True)
class ClsLossConfig:
    """The classification-loss slot of the dense heads (SPEC §2.5): focal loss
    (``loss.focal_alpha``, ``loss.focal_gamma``) or a rival whose positives' targets are the
    IoU of their decoded box (detached, from the step's predictions)."""

    kind: Literal["focal", "qfl", "vfl", "rs"] = "focal"
    qfl_beta: float = 2.0  # Quality Focal Loss (GFL, Li et al. 2020): exponent on |IoU - σ|
    vfl_alpha: float = 0.75  # Varifocal Loss (Zhang et al. 2021): weight of the negatives
    vfl_gamma: float = 2.0  # Varifocal Loss: exponent on the negatives' probability
    rs_delta: float = 0.5  # Rank & Sort Loss (Oksuz et al. 2021): smoothed step's half-width


@dataclass(frozen=True)
class LossConfig:
    cls: ClsLossConfig = field(default_factory=ClsLossConfig)
    focal_alpha: float = 0.25  # focal loss (and PAA's anchor scores, Sparse R-CNN's matching)
    focal_gamma: float = 2.0
    reg: Literal["l1", "smooth_l1", "giou"] = "l1"  # box regression loss
    reg_weight: float = 1.0
    corr: CorrLossConfig = field(default_factory=CorrLossConfig)
    dc: DCConfig = field(default_factory=DCConfig)
    sparse: SparseLossConfig = field(default_factory=SparseLossConfig)  # sparse_rcnn only


@dataclass(frozen=True)
class NMSConfig:
    kind: Literal["greedy", "soft", "cl_balanced"] = "greedy"
    iou_threshold: float = 0.5
    score_threshold: float = 0.05  # candidates below this score are dropped before NMS
    pre_nms_topk: int = 1000  # candidates kept per FPN level before NMS
    max_detections: int = 100  # detections per image after NMS
    soft_method: Literal["linear", "gaussian"] = "gaussian"
    soft_sigma: float = 0.5
    beta: float = 1.0  # CL-B NMS: weight of the localization score


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 300  # optimizer steps
    batch_size: int = 16  # images per step, over all workers
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3  # at batch `lr_reference_batch` when lr_scaling is not "none"
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # lr x (batch / reference)^1 or ^.5
    lr_reference_batch: int = 16  # the batch size `lr` was tuned for (lr_scaling only)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    warmup_iters: int = 50  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.001
    # After the warm-up: "step" drops lr 10x at each of `lr_steps` (fractions of
    # `iterations`); "cosine" decays it to 0 along a half cosine over the remaining steps.
    schedule: Literal["step", "cosine"] = "step"
    lr_steps: tuple[float, ...] = (0.75, 0.9)  # schedule "step": where lr drops 10x
    ema_decay: float = 0.0  # >0: evaluate (and checkpoint) an exponential moving average
    grad_clip: float = 10.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # evaluate every N iterations (0: only at the end)
    log_every: int = 20  # iterations between training-metric reports
    checkpoint_every: int = 0  # iterations between checkpoints (0: only at the end)
    num_threads: int = 0  # torch CPU threads per worker (0: leave torch's default)
    # Autocast: bf16 on CUDA, or on a CPU with native bf16 (avx512_bf16 / amx_bf16; others
    # train in fp32 and say so); fp16 (with a GradScaler) on CUDA only.
    amp: Literal["off", "bf16", "fp16"] = "off"
    num_workers: int = 1  # DDP workers (Ray Train); each gets batch_size / num_workers
    use_gpu: bool = False
    sync_bn: bool = False  # DDP on GPUs: BatchNorm statistics over the global batch

    @property
    def scaled_lr(self) -> float:
        """The base learning rate after the batch-size scaling rule (Goyal et al. 2017's
        linear rule, or the square-root rule often used with Adam)."""
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]


Fit = Literal["fixed", "auto", "fitted"]


@dataclass(frozen=True)
class FitConfig:
    """Settings fitted to the training split's boxes before a run (``corrtune data check``
    shows what they come to). Each switch: ``fixed`` (the numbers as given), ``auto`` (fit
    them) or ``fitted``: a run logs and checkpoints the fitted numbers with the switch at
    ``fitted``, a config that repeats the run without reading the data again."""

    # data.image_size: the smallest multiple of 32 at which every class's 5th-percentile
    # box side is at least min_box_side pixels, from min_image_size up to data.image_size.
    image_size: Fit = "fixed"
    min_box_side: float = 12.0
    min_image_size: int = 160
    # model.min_level / max_level (and retinanet's model.anchor_scale): the locations reach
    # every class's 1st to 99th percentile box side at the (fitted) image size.
    geometry: Fit = "fixed"
    # train.iterations: `epochs` passes over the training images, at most `budget_mpix`
    # megapixels of batches (images of image_size^2; 0 = no cap).
    schedule: Fit = "fixed"
    epochs: float = 24.0
    budget_mpix: float = 0.0

    @property
    def pending(self) -> bool:
        """Whether a setting is still to be fitted (a switch at ``auto``)."""
        return "auto" in (self.image_size, self.geometry, self.schedule)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "corrtune"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    nms: NMSConfig = field(default_factory=NMSConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fit: FitConfig = field(default_factory=FitConfig)


# ----------------------------------------------------------------------------- validation

# Values that no field may take, checked after types: (dotted key, predicate, message).
_RANGES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("train.iterations", lambda v: v >= 1, "must be at least 1"),
    ("train.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("train.lr", lambda v: v > 0, "must be positive"),
    ("train.num_workers", lambda v: v >= 1, "must be at least 1"),
    ("train.lr_reference_batch", lambda v: v >= 1, "must be at least 1"),
    ("data.image_size", lambda v: v >= 32, "must be at least 32 pixels"),
    ("assign.fg_iou", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("assign.bg_iou", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("assign.alpha", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("loss.corr.weight", lambda v: v >= 0, "must be non-negative"),
    ("train.ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1) (0: off)"),
    ("loss.cls.qfl_beta", lambda v: v == 0 or v >= 1, "must be 0 or at least 1"),
    ("loss.cls.vfl_alpha", lambda v: v >= 0, "must be non-negative"),
    ("loss.cls.vfl_gamma", lambda v: v >= 0, "must be non-negative"),
    ("loss.cls.rs_delta", lambda v: v >= 0, "must be non-negative"),
    ("model.quality_alpha", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("loss.corr.strength", lambda v: v > 0, "must be positive"),
    ("loss.dc.eps", lambda v: v > 0, "must be positive"),
    ("nms.iou_threshold", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("nms.max_detections", lambda v: v >= 1, "must be at least 1"),
    ("model.fpn_channels", lambda v: v >= 8, "must be at least 8"),
    # Every trunk ends at level 5 (stride 32); P6 and P7 are convs on top of it.
    ("model.max_level", lambda v: 5 <= v <= 7, "must be 5, 6 or 7 (the trunks end at 5)"),
    ("model.min_level", lambda v: v >= 2, "must be at least 2 (stride 4)"),
    ("model.num_proposals", lambda v: v >= 1, "must be at least 1"),
    ("model.num_stages", lambda v: v >= 1, "must be at least 1"),
    ("model.sparse.attention_heads", lambda v: v >= 1, "must be at least 1"),
    ("model.sparse.ffn_multiplier", lambda v: v >= 1, "must be at least 1"),
    ("model.sparse.dynamic_divisor", lambda v: v >= 1, "must be at least 1"),
    ("model.sparse.pooler_resolution", lambda v: v >= 1, "must be at least 1"),
    ("model.sparse.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("loss.sparse.cls_weight", lambda v: v >= 0, "must be non-negative"),
    ("loss.sparse.l1_weight", lambda v: v >= 0, "must be non-negative"),
    ("loss.sparse.giou_weight", lambda v: v >= 0, "must be non-negative"),
    ("fit.min_box_side", lambda v: v > 0, "must be positive"),
    ("fit.min_image_size", lambda v: v >= 32, "must be at least 32 pixels"),
    ("fit.epochs", lambda v: v > 0, "must be positive"),
    ("fit.budget_mpix", lambda v: v >= 0, "must be non-negative"),
]

# Split-file keys and the dataset kinds they apply to (the others find their files).
_SPLIT_FILE_KINDS = {"ann_file": ("coco",), "images": ("coco", "yolo")}


def _check_ranges(cfg: ExperimentConfig, source: str) -> None:
    flat = flatten(cfg)
    for key, ok, message in _RANGES:
        if not ok(flat[key]):
            raise ConfigError(source, key, f"{message} (got {flat[key]!r})")
    if cfg.assign.bg_iou > cfg.assign.fg_iou:
        raise ConfigError(source, "assign.bg_iou", "must not exceed assign.fg_iou")
    if cfg.model.min_level > cfg.model.max_level:
        raise ConfigError(source, "model.min_level", "must not exceed model.max_level")
    if cfg.train.sync_bn and not cfg.train.use_gpu:
        raise ConfigError(
            source, "train.sync_bn", "needs train.use_gpu (torch's SyncBatchNorm is GPU-only)"
        )
    if cfg.train.schedule == "cosine" and cfg.train.lr_steps != TrainConfig().lr_steps:
        raise ConfigError(
            source,
            "train.lr_steps",
            "is read only by train.schedule step (the cosine schedule has no drops); "
            f"leave it at {list(TrainConfig().lr_steps)} or choose schedule step",
        )
    if cfg.train.batch_size % cfg.train.num_workers:
        raise ConfigError(source, "train.batch_size", "must be divisible by train.num_workers")
    for split in ("train", "val"):
        files = getattr(cfg.data, split)
        for key, kinds in _SPLIT_FILE_KINDS.items():
            if getattr(files, key) and cfg.data.kind not in kinds:
                raise ConfigError(
                    source,
                    f"data.{split}.{key}",
                    f"applies to {' and '.join(kinds)} datasets, not {cfg.data.kind} "
                    "(its files are found from data.root and the split's name)",
                )
    if cfg.fit.image_size == "auto" and cfg.fit.min_image_size > cfg.data.image_size:
        raise ConfigError(
            source, "fit.min_image_size", "must not exceed data.image_size (the fit's cap)"
        )


def _coerce(value: Any, annotation: Any, source: str, key: str) -> Any:
    """Check ``value`` against a field's type annotation; convert lists to tuples."""
    origin = get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {value!r}")
        return _build(annotation, value, source, key)  # type: ignore[arg-type]
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(source, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(source, key, f"expected a list, got {value!r}")
        item_type = get_args(annotation)[0]
        return tuple(_coerce(v, item_type, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(source, key, "union types are not supported in configs")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(source, key, f"unsupported field type {annotation!r}")


def _build(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = did_you_mean(dotted if dotted in RENAMED_KEYS else str(key), names)
            raise ConfigError(source, dotted, f"unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], source, dotted)
    return cls(**kwargs)


def from_dict(values: dict[str, Any], source: str = "") -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested plain values."""
    cfg = _build(ExperimentConfig, values, source)
    _check_ranges(cfg, source)
    return typing.cast(ExperimentConfig, cfg)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Nested plain values (tuples as lists) that :func:`from_dict` turns back into ``cfg``."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(cfg)))


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """``{"loss.corr.weight": 0.1, ...}``: what MLflow logs as params and a sweep varies."""
    out: dict[str, Any] = {}

    def walk(prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(dotted, value)
            else:
                out[dotted] = tuple(value) if isinstance(value, list) else value

    walk("", to_dict(cfg))
    return out


# Keys that were replaced, and what says the same now.
RENAMED_KEYS = {
    "model.centerness": "replaced by model.quality: true is model.quality=native (the "
    "detector's own branch), false is model.quality=none",
}


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A config stored before a key was replaced (a checkpoint's), in today's keys: the
    values mean the same (``model.centerness: true`` was the detector's own branch)."""
    model = values.get("model")
    if not isinstance(model, dict) or "centerness" not in model:
        return values
    model = dict(model)
    model["quality"] = "native" if model.pop("centerness") else "none"
    return {**values, "model": model}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` (difflib's ratio, the same
    answer on every run), or "" when none is close; for a replaced key, what replaced it."""
    if word in RENAMED_KEYS:
        return f": {RENAMED_KEYS[word]}"
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known_keys() -> set[str]:
    """Every dotted key an override or a search space may name."""
    return set(flatten(ExperimentConfig()))


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.corr.weight=0.2"`` -> ``("loss.corr.weight", 0.2)`` (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", key.strip(), f"value is not valid YAML: {exc}") from None
    return key.strip(), value


def apply_overrides(
    values: dict[str, Any], overrides: dict[str, Any], source: str
) -> dict[str, Any]:
    """Set ``dotted.key`` entries of nested ``values`` (a new dict; the input is unchanged)."""
    out = to_dict(from_dict(values)) if values else to_dict(ExperimentConfig())
    keys = known_keys()
    for dotted, value in overrides.items():
        if dotted not in keys:
            raise ConfigError(source, dotted, f"unknown key{did_you_mean(dotted, keys)}")
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def preset_names() -> list[str]:
    folder = resources.files("detectors") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: Path | str, source: str | None = None) -> dict[str, Any]:
    """Read a YAML mapping; any problem is a one-line :class:`ConfigError` naming the file."""
    source = source or str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(source, "", f"invalid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    return values


def _preset_path(name: str) -> Path:
    if name not in preset_names():
        raise ConfigError("--preset", name, f"unknown preset; choose from {preset_names()}")
    return Path(str(resources.files("detectors") / "presets" / f"{name}.yaml"))


@dataclass(frozen=True)
class PresetSection:
    """Values a preset sets only for some configs: ``when: [{if: {model.name: [...]},
    set: {model.head_convs: 1}}]``, so that a preset meant for every detector sets no value
    a detector would not read (``build_detector`` refuses those)."""

    conditions: tuple[tuple[str, tuple[Any, ...]], ...]  # dotted key, the values it may take
    values: dict[str, Any]  # dotted key -> value

    def applies(self, flat: dict[str, Any]) -> bool:
        return all(flat[key] in allowed for key, allowed in self.conditions)


def _preset_sections(raw: Any, source: str) -> list[PresetSection]:
    if not isinstance(raw, list):
        raise ConfigError(source, "when", "expected a list of {if: ..., set: ...}")
    keys = known_keys()
    sections = []
    for i, item in enumerate(raw):
        where = f"when[{i}]"
        if not isinstance(item, dict) or set(item) != {"if", "set"}:
            raise ConfigError(source, where, "expected {if: {key: [values]}, set: {key: value}}")
        conditions, values = item["if"], item["set"]
        if not isinstance(conditions, dict) or not isinstance(values, dict):
            raise ConfigError(source, where, "`if` and `set` must be mappings of dotted keys")
        for key in [*conditions, *values]:
            if key not in keys:
                raise ConfigError(
                    source, f"{where}.{key}", f"unknown key{did_you_mean(key, keys)}"
                )
        for key in values:
            if key in conditions:
                raise ConfigError(source, f"{where}.set.{key}", "must not also be a condition")
        from_dict(apply_overrides({}, values, source), source)  # each value is valid
        sections.append(
            PresetSection(
                conditions=tuple(
                    (k, tuple(v) if isinstance(v, list) else (v,)) for k, v in conditions.items()
                ),
                values=dict(values),
            )
        )
    return sections


def preset_values(name: str) -> tuple[dict[str, Any], list[PresetSection]]:
    """The nested values of preset ``name`` (``detectors/presets/<name>.yaml``) and its
    conditional sections (``when``)."""
    source = f"preset {name}"
    values = read_yaml(_preset_path(name), source=source)
    sections = _preset_sections(values.pop("when", []), source)
    from_dict(values, source)
    return values, sections


def load_config(
    preset: str | None = None,
    path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Compose preset ← YAML file ← overrides into one validated :class:`ExperimentConfig`."""
    return compose_config(preset, path, overrides)[0]


def compose_config(
    preset: str | None = None,
    path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[ExperimentConfig, dict[str, str]]:
    """:func:`load_config`, and where each value that is not a default came from: dotted key
    -> ``"preset NAME"``, the file's path or ``"--set"`` (the last that set it).

    A preset's ``when`` sections apply when their conditions hold in the config composed
    without them (the file and the overrides decide, e.g., ``model.name``); their values sit
    with the preset's, under the file and the overrides."""
    values: dict[str, Any] = {}
    sections: list[PresetSection] = []
    source = "defaults"
    if preset:
        values, sections = preset_values(preset)
        source = f"preset {preset}"
    file_values: dict[str, Any] = {}
    if path:
        file_values = read_yaml(path)
        from_dict(file_values, str(path))  # report the file's own mistakes under its name
    overrides = overrides or {}
    composed = _compose(values, file_values, overrides)
    flat = flatten(from_dict(composed, source))
    for section in [s for s in sections if s.applies(flat)]:
        values = _deep_merge(values, _nested(section.values))
    if sections:
        composed = _compose(values, file_values, overrides)
    sources = dict.fromkeys(_dotted(values), f"preset {preset}")
    sources |= dict.fromkeys(_dotted(file_values), str(path))
    sources |= dict.fromkeys(overrides, "--set")
    if path:
        source = str(path)
    if overrides:
        source = "--set"
    return from_dict(composed, source), sources


def _compose(
    preset: dict[str, Any], file_values: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    values = _deep_merge(preset, file_values)
    return apply_overrides(values, overrides, "--set") if overrides else values


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"model.head_convs": 1}`` -> ``{"model": {"head_convs": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _dotted(values: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted leaf keys of nested ``values``."""
    keys = []
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys += _dotted(value, dotted) if isinstance(value, dict) else [dotted]
    return keys


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
