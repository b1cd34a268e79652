"""Ray's internals corrtune relies on: present in the installed Ray, and checked loudly."""

from __future__ import annotations

import pytest

from orchestrator import ray_compat


def test_every_internal_is_there_in_the_installed_ray() -> None:
    assert ray_compat.problems() == []


@pytest.mark.parametrize("name", sorted(ray_compat.CHECKS))
def test_each_check_finds_its_internal(name: str) -> None:
    assert ray_compat.CHECKS[name]() == []


def test_a_missing_internal_is_one_line_naming_the_ray_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray
    import ray.train.v2._internal.constants as constants

    monkeypatch.delattr(constants, "HEALTH_CHECK_INTERVAL_S_ENV_VAR")
    with pytest.raises(ray_compat.RayCompatError) as raised:
        ray_compat.check()
    text = str(raised.value)
    assert text.startswith(f"ray {ray.__version__}: ")
    assert "HEALTH_CHECK_INTERVAL_S_ENV_VAR" in text and "\n" not in text


def test_a_renamed_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.tune.constants as constants

    monkeypatch.setattr(constants, "TUNE_ENV_VARS", {"SOMETHING_ELSE"})
    found = ray_compat.problems()
    assert any("TUNE_DISABLE_STRICT_METRIC_CHECKING" in p for p in found)


def test_mixins_become_base_classes_of_the_trial_actor() -> None:
    from ray.tune.trainable.function_trainable import wrap_function

    class Mixin:
        pass

    def trainable(config: dict) -> None:
        pass

    assert issubclass(wrap_function(ray_compat.with_mixins(trainable, Mixin)), Mixin)


def test_the_quiet_progress_callback_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    class Trial:  # what the callback reads of a Tune trial
        def __init__(self) -> None:
            self.last_result = {"done": True, "training_iteration": 3}
            self.config: dict = {}
            self.evaluated_params: dict = {}
            self.trial_id = "t1"

        def __str__(self) -> str:
            return "trainable_t1"

    quiet = ray_compat.quiet_progress_callback()
    trial = Trial()
    quiet.on_trial_complete(0, [], trial)
    quiet.on_trial_result(0, [], trial, {"done": True})
    assert capsys.readouterr().out == ""


def test_no_private_ray_or_optuna_name_outside_ray_compat() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "orchestrator"
    pattern = re.compile(
        r"_internal|__mixins__|_inter_actor_queue|_setup_study|_ot_study|RAY_TRAIN_|\bTUNE_"
        r"|RAY_API_SERVER|RAY_AIR_"
    )
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in root.glob("*.py")
        if path.name != "ray_compat.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
