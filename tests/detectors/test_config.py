from __future__ import annotations

from pathlib import Path

import pytest

from detectors.config import (
    ConfigError,
    ExperimentConfig,
    flatten,
    from_dict,
    load_config,
    parse_override,
    preset_names,
    to_dict,
)


def test_presets_load_and_round_trip() -> None:
    assert {"smoke", "tiny"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(preset=name)
        assert from_dict(to_dict(cfg)) == cfg


def test_override_changes_only_its_key() -> None:
    base = load_config(preset="smoke")
    cfg = load_config(preset="smoke", overrides=dict([parse_override("loss.corr.weight=0.3")]))
    assert cfg.loss.corr.weight == 0.3
    diff = {k for k, v in flatten(cfg).items() if flatten(base)[k] != v}
    assert diff == {"loss.corr.weight"}


@pytest.mark.parametrize(
    ("override", "key", "problem"),
    [
        ("loss.corr.wieght=0.1", "loss.corr.wieght", "unknown key"),
        ("loss.corr.kind=kendall", "loss.corr.kind", "must be one of"),
        ("train.iterations=0", "train.iterations", "at least 1"),
        ("train.iterations=1.5", "train.iterations", "expected an integer"),
        ("loss.dc.enabled=maybe", "loss.dc.enabled", "expected true or false"),
        ("assign.bg_iou=0.9", "assign.bg_iou", "must not exceed"),
        ("train.sync_bn=true", "train.sync_bn", "needs train.use_gpu"),
        ("train.lr_scaling=cubic", "train.lr_scaling", "must be one of"),
    ],
)
def test_bad_override_names_key_and_problem(override: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(preset="smoke", overrides=dict([parse_override(override)]))
    assert info.value.key == key
    assert problem in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  iterashuns: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(preset="smoke", path=path)
    assert str(path) in str(info.value) and "train.iterashuns" in str(info.value)
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path=path)


def test_lists_become_tuples_and_config_is_frozen() -> None:
    cfg = from_dict({"train": {"lr_steps": [0.5, 0.8]}})
    assert cfg.train.lr_steps == (0.5, 0.8)
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    assert flatten(ExperimentConfig())["train.lr_steps"] == (0.75, 0.9)


def test_lr_steps_under_the_cosine_schedule_are_refused() -> None:
    # The cosine schedule has no drops: lr_steps set beside it would be read by nothing.
    load_config("tiny", overrides={"train.schedule": "cosine"})  # the default steps: fine
    with pytest.raises(ConfigError, match=r"train\.lr_steps.*read only by train\.schedule step"):
        load_config("tiny", overrides={"train.lr_steps": [0.5]})
    step = load_config("tiny", overrides={"train.schedule": "step", "train.lr_steps": [0.5]})
    assert step.train.lr_steps == (0.5,)
