"""Every setting means something: what a config reads is declared next to the builder,
the builder reads exactly that, and a setting nothing reads is a ConfigError naming it."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Any

import pytest

from detectors.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    compose_config,
    load_config,
    preset_names,
)
from detectors.models import DETECTORS, check_settings, settings_read
from detectors.models.build import assemble_detector
from detectors.models.reads import CHECKED_SECTIONS

NAMES = sorted(DETECTORS)


class Recorder:
    """A config that records the dotted key of every setting read through it."""

    def __init__(self, obj: Any, seen: set[str], prefix: str = "") -> None:
        self._obj, self._seen, self._prefix = obj, seen, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        key = f"{self._prefix}{name}"
        if dataclasses.is_dataclass(value):
            return Recorder(value, self._seen, key + ".")
        self._seen.add(key)
        return value


def smoke(name: str, **overrides: Any) -> ExperimentConfig:
    return load_config("smoke", overrides={"model.name": name, **overrides})


# Method switches that change what is read; each is tried on every detector that takes it.
SWITCHES: list[dict[str, Any]] = [
    {},
    {"loss.corr.weight": 0.2},
    {"loss.corr.weight": 0.2, "loss.corr.kind": "spearman", "loss.corr.pool": "image"},
    {"loss.corr.kind": "pearson"},
    {"loss.dc.enabled": True},
    {"nms.kind": "soft"},
    {"nms.kind": "cl_balanced"},
    {"assign.kind": "iac"},
    {"model.quality": "none"},
    {"model.quality": "iou", "model.quality_alpha": 0.3},
    {"model.quality": "centerness"},
    {"loss.cls.kind": "qfl"},
    {"loss.cls.kind": "vfl", "loss.dc.enabled": True},
    {"loss.cls.kind": "rs"},
    {"loss.cls.kind": "rs", "model.quality": "iou", "loss.corr.weight": 0.2},
]


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for name, switch in itertools.product(NAMES, SWITCHES):
        try:
            check_settings(smoke(name, **switch))
        except ConfigError:
            continue  # a switch this detector does not take
        cases.append((name, switch))
    return cases


@pytest.mark.parametrize(("name", "switch"), _cases())
def test_the_builder_reads_exactly_what_is_declared(name: str, switch: dict[str, Any]) -> None:
    cfg = smoke(name, **switch)
    seen: set[str] = set()
    assemble_detector(typing.cast(ExperimentConfig, Recorder(cfg, seen)), num_classes=3)
    read = {k for k in seen if k.startswith(CHECKED_SECTIONS)}
    assert read == settings_read(cfg)


def test_every_switch_was_tried_somewhere() -> None:
    tried = {str(switch) for _, switch in _cases()}
    assert tried == {str(switch) for switch in SWITCHES}


def test_the_table_is_the_config_choice() -> None:
    choices = typing.get_args(typing.get_type_hints(ModelConfig)["name"])
    assert set(choices) == set(DETECTORS)


def test_a_resnet_reads_its_trunk_settings_and_the_tiny_cnn_does_not() -> None:
    assert "model.frozen_bn" in settings_read(smoke("retinanet", **{"model.backbone": "resnet18"}))
    with pytest.raises(ConfigError) as info:
        check_settings(smoke("retinanet", **{"model.frozen_bn": True}))
    assert info.value.key == "model.frozen_bn" and "model.backbone=tiny" in info.value.problem


QFL = {"loss.cls.kind": "qfl"}
RS = {"loss.cls.kind": "rs"}


@pytest.mark.parametrize(
    ("name", "given", "key", "value", "says"),
    [
        ("atss", {}, "assign.fg_iou", 0.7, "not used by model.name=atss: its assigner is ATSS "
         "(model.atss_topk)"),
        ("paa", {"assign.fg_iou": 0.5}, "assign.bg_iou", 0.3, "its assigner is PAA"),
        ("atss", {"assign.kind": "iac"}, "model.atss_topk", 5, "with assign.kind=iac: its "
         "assigner is IAC"),
        ("fcos", {}, "assign.kind", "iac", "iac needs an anchor-based detector"),
        ("atss", {}, "model.anchor_scale", 3.0, "one square of 8 · stride"),
        ("paa", {}, "loss.reg", "smooth_l1", "always GIoU"),
        ("paa", {}, "loss.reg_weight", 2.0, "weighted by model.paa_reg_weight"),
        ("retinanet", {}, "model.paa_reg_weight", 2.0, "only paa reads it"),
        ("retinanet", {}, "model.fovea_sigma", 0.3, "its assigner is MaxIoU (assign.fg_iou, "),
        ("retinanet", {}, "model.paa_score_voting", False, "only paa reads it"),
        ("sparse_rcnn", {}, "nms.pre_nms_topk", 10, "not used by model.name=sparse_rcnn"),
        ("sparse_rcnn", {}, "model.head_convs", 3, "only retinanet, atss, fcos, foveabox, paa"),
        ("sparse_rcnn", {}, "nms.kind", "soft", "NMS-free"),
        ("sparse_rcnn", {}, "loss.dc.enabled", True, "needs a dense head"),
        ("sparse_rcnn", {}, "loss.cls.kind", "qfl", "its set loss is focal loss"),
        ("sparse_rcnn", {}, "model.quality", "iou", "it is not a dense head"),
        ("retinanet", {}, "nms.soft_sigma", 0.3, "not used by nms.kind=greedy: only soft reads"),
        ("retinanet", {}, "loss.corr.grad_to", "both", "not used by loss.corr.weight=0"),
        ("retinanet", {}, "loss.corr.strength", 0.1, "loss.corr.kind=concordance: only spearman"),
        ("retinanet", {}, "loss.dc.eps", 0.2, "not used by loss.dc.enabled=false"),
        # the classification slot
        ("retinanet", {}, "loss.cls.qfl_beta", 1.0, "not used by loss.cls.kind=focal: only qfl"),
        ("atss", QFL, "loss.focal_alpha", 0.3, "not used by loss.cls.kind=qfl: only focal"),
        ("paa", QFL, "loss.focal_alpha", 0.3, None),  # PAA's anchor scores read it
        ("atss", RS, "loss.dc.enabled", True, "not used by loss.cls.kind=rs: RS Loss ranks"),
        ("atss", RS, "loss.reg_weight", 2.0, "RS-Net balances the box loss by its value"),
        ("atss", RS, "loss.reg", "giou", None),  # RS-Net's box loss is a choice
        # the quality branch
        ("foveabox", {}, "model.quality_alpha", 0.4, "not used by model.quality=native: "
         "there is no quality branch"),
        ("atss", {}, "model.quality_alpha", 0.4, None),  # ATSS's centerness
        ("atss", QFL, "model.quality_alpha", 0.4, "(none: loss.cls.kind=qfl learns the quality"),
        ("atss", QFL | {"model.quality": "iou"}, "model.quality_alpha", 0.4, None),
        ("paa", {}, "model.paa_iou_weight", 1.0, None),  # read: PAA has its IoU branch
        ("paa", {"model.quality": "centerness"}, "model.paa_iou_weight", 1.0, "PAA has no IoU"),
        ("retinanet", {"model.quality": "iou"}, "model.paa_iou_weight", 1.0, "only paa reads it"),
    ],
)  # fmt: skip
def test_a_setting_nothing_reads_is_an_error_naming_it(
    name: str, given: dict[str, Any], key: str, value: Any, says: str | None
) -> None:
    cfg = smoke(name, **given, **{key: value})
    if says is None:
        check_settings(cfg)
        return
    with pytest.raises(ConfigError) as info:
        check_settings(cfg, sources={key: "--set"})
    assert info.value.key == key and info.value.source == "--set"
    assert says in info.value.problem, info.value.problem


def test_model_centerness_names_what_replaced_it() -> None:
    with pytest.raises(ConfigError) as info:
        smoke("atss", **{"model.centerness": False})
    assert "replaced by model.quality" in info.value.problem
    assert "false is model.quality=none" in info.value.problem


def test_a_default_value_is_never_an_error() -> None:
    # assign.fg_iou = 0.5 is the default: ATSS ignores it, and nobody asked for it.
    check_settings(smoke("atss", **{"assign.fg_iou": 0.5}))


def test_one_message_names_every_unused_setting() -> None:
    cfg = smoke("atss", **{"assign.fg_iou": 0.7, "model.fovea_sigma": 0.3})
    # In the config's order: model.* comes before assign.*.
    with pytest.raises(ConfigError, match=r"model\.fovea_sigma.*and 1 more: assign\.fg_iou"):
        check_settings(cfg)


def test_the_preset_and_the_file_are_named_as_sources(tmp_path: Any) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("assign: {fg_iou: 0.6}\n")
    cfg, sources = compose_config("smoke", path, {"model.name": "atss"})
    assert sources["assign.fg_iou"] == str(path) and sources["model.name"] == "--set"
    assert sources["model.head_convs"] == "preset smoke"  # a `when` section, for ATSS
    with pytest.raises(ConfigError) as info:
        check_settings(cfg, sources)
    assert info.value.source == str(path) and info.value.key == "assign.fg_iou"


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("name", NAMES)
def test_every_preset_sets_only_what_every_detector_reads(preset: str, name: str) -> None:
    check_settings(load_config(preset, overrides={"model.name": name}))


def test_preset_sections_apply_by_detector() -> None:
    assert smoke("retinanet").model.head_convs == 1
    assert smoke("sparse_rcnn").model.head_convs == ModelConfig.head_convs  # not set for it
    tiny = load_config("tiny", overrides={"model.name": "paa"})
    assert tiny.loss.reg == "l1" and tiny.model.anchor_scale == ModelConfig.anchor_scale
    assert load_config("tiny").model.anchor_scale == 2.5 and load_config("tiny").loss.reg == "giou"
