"""Each search method and repeats produce the planned trials (plan level; no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from detectors.config import ConfigError
from orchestrator.plan import describe_plan, plan_sweep
from orchestrator.space import grid_plan, load_space, random_plan, static_plan, suggest_overrides

DISTS = """
name: demo
base: smoke
metric: {name: AP, goal: maximize}
method: METHOD
max_trials: 7
parameters:
  loss.corr.weight: {distribution: uniform, min: 0.05, max: 0.5}
  train.lr: {distribution: loguniform, min: 0.0001, max: 0.01}
  train.iterations: {distribution: int_uniform, min: 2, max: 5}
  loss.corr.kind: {values: [pearson, spearman]}
  loss.corr.strength:
    distribution: loguniform
    min: 0.001
    max: 1.0
    when: {loss.corr.kind: [spearman]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _check_ranges(overrides: dict) -> None:
    assert 0.05 <= overrides["loss.corr.weight"] <= 0.5
    assert 1e-4 <= overrides["train.lr"] <= 1e-2
    assert overrides["train.iterations"] in range(2, 6)
    assert isinstance(overrides["train.iterations"], int)
    # The conditional parameter is set exactly when its condition holds.
    assert ("loss.corr.strength" in overrides) == (overrides["loss.corr.kind"] == "spearman")


@pytest.mark.parametrize("repeats", [1, 3])
def test_random_plans_max_trials_times_repeats(tmp_path: Path, repeats: int) -> None:
    text = DISTS.replace("METHOD", "random") + f"repeats: {repeats}\n"
    space = load_space(write(tmp_path, text))
    plan = random_plan(space)
    assert len(plan) == 7 * repeats
    assert len({t.key for t in plan}) == len(plan)
    for trial in plan:
        _check_ranges(trial.overrides)
        assert "train.seed" not in trial.overrides  # the seed comes from the repeat
    assert sorted(t.repeat for t in plan) == sorted(list(range(repeats)) * 7)
    assert [t.key for t in random_plan(space)] == [t.key for t in plan]  # reproducible
    # Every planned trial resolves to a valid config.
    assert len(plan_sweep(space, {})) == 7 * repeats


def test_random_draws_both_branches_and_spread(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, DISTS.replace("METHOD", "random").replace("7", "40")))
    plan = random_plan(space)
    kinds = {t.overrides["loss.corr.kind"] for t in plan}
    assert kinds == {"pearson", "spearman"}
    logs = [math.log10(t.overrides["train.lr"]) for t in plan]
    assert min(logs) < -3.3 and max(logs) > -2.7  # loguniform covers both decades


def test_random_categorical_space_is_deduplicated(tmp_path: Path) -> None:
    text = """
name: cat
base: smoke
method: random
max_trials: 10
parameters:
  nms.kind: {values: [greedy, soft, cl_balanced]}
"""
    plan = random_plan(load_space(write(tmp_path, text)))
    assert sorted(t.overrides["nms.kind"] for t in plan) == ["cl_balanced", "greedy", "soft"]


def test_tpe_suggests_real_distributions_with_conditions(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, DISTS.replace("METHOD", "tpe")))
    assert static_plan(space) == []
    seen: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest_overrides(space, trial)
        seen.append(overrides)
        return overrides["loss.corr.weight"]

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3)
    )
    study.optimize(objective, n_trials=space.max_trials)
    assert len(seen) == space.max_trials == 7
    for overrides in seen:
        _check_ranges(overrides)
    dists = study.trials[0].distributions
    assert dists["train__lr"].log and dists["train__iterations"].step == 1


def test_tpe_dry_run_describes_the_search(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, DISTS.replace("METHOD", "tpe")))
    text = describe_plan(space, plan_sweep(space, {}), set())
    assert "TPE picks up to 7 trial(s)" in text
    assert "loss.corr.strength: loguniform(0.001, 1), when loss.corr.kind in ['spearman']" in text


def test_tpe_needs_one_repeat(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, DISTS.replace("METHOD", "tpe") + "repeats: 2\n"))
    assert info.value.key == "repeats"


def test_grid_max_trials_caps_the_plan(tmp_path: Path) -> None:
    text = """
name: g
base: smoke
max_trials: 4
repeats: 2
parameters:
  loss.corr.weight: {values: [0.0, 0.1, 0.2]}
"""
    plan = grid_plan(load_space(write(tmp_path, text)))
    assert [(t.overrides["loss.corr.weight"], t.repeat) for t in plan] == [
        (0.0, 0),
        (0.0, 1),
        (0.1, 0),
        (0.1, 1),
    ]


def test_grid_needs_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, DISTS.replace("METHOD", "grid")))
    assert info.value.key == "parameters.loss.corr.weight"
