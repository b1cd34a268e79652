"""What a config reads, from the builder's declarations, and the refusal of the rest.

A setting of a detector or a method (``model.*``, ``assign.*``, ``loss.*``, ``nms.*``) that
differs from its default while nothing the config chooses reads it is an error: in a sweep
it would give trials that differ only in a setting nothing reads, reported as "no effect".
:func:`choices` lists what a config chooses (the detector, each slot's member, switches
left off), each with the settings it reads, from the declarations next to the builder
(``DETECTORS``, ``ASSIGNER_SETTINGS``, ...); :func:`check_settings` names the first setting
nothing reads and what ignores it. Cheap: nothing is built, so the orchestrator runs it on
every planned trial. ``tests/detectors/models/test_settings.py`` builds every detector
through a config that records what is read, and checks it is exactly what is declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from detectors.assigners import ASSIGNERS
from detectors.config import ConfigError, ExperimentConfig, flatten
from detectors.models.backbone import TINY_BACKBONES
from detectors.models.build import (
    ASSIGNER_SETTINGS,
    CLS_LOSS_SETTINGS,
    CORRELATION_SETTINGS,
    DETECTORS,
    NMS_SETTINGS,
    TRUNK_SETTINGS,
    DetectorSpec,
    assigner_name,
    is_elementwise,
    quality_kind,
)

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
            reads=() if m.backbone in TINY_BACKBONES else tuple(TRUNK_SETTINGS.values()),
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
