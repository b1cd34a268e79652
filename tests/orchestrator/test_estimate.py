"""The --dry-run cost estimate: its arithmetic, its sources, how it scales."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from detectors.config import load_config
from orchestrator.estimate import (
    TYPICAL_OVERHEAD_S,
    StepTiming,
    estimate_cost,
    evaluations,
    overhead_from_ledger,
    sweep_estimate,
    timing_from_ledger,
)
from orchestrator.ledger import Ledger
from orchestrator.space import grid_plan, load_space, trial_config

SPACE = """
name: est
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}
resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0.5}
"""
TIMING = StepTiming(sec_per_iter=0.5, sec_per_eval=3.0, source="given")


@pytest.fixture
def space(tmp_path: Path) -> object:
    path = tmp_path / "est.yaml"
    path.write_text(SPACE)
    return load_space(path)


def test_evaluations_per_trial() -> None:
    cfg = load_config("smoke", overrides={"train.iterations": 10})
    assert evaluations(cfg) == 1  # only at the end
    every = dataclasses.replace(cfg.train, eval_every=5)
    assert evaluations(dataclasses.replace(cfg, train=every)) == 2  # 5 and 10 (the end)
    every = dataclasses.replace(cfg.train, eval_every=4)
    assert evaluations(dataclasses.replace(cfg, train=every)) == 3  # 4, 8 and the end


def test_cost_scales_with_trials_and_concurrency(space: object) -> None:
    cfg = load_config("smoke", overrides={"train.iterations": 100})

    def wall(trials: int, concurrency: int) -> float:
        return estimate_cost(
            space,  # type: ignore[arg-type]
            [cfg] * trials,
            TIMING,
            concurrency=concurrency,
            overhead_s=20.0,
            overhead_source="given",
        ).wall_s

    per_trial = 100 * 0.5 + 1 * 3.0 + 20.0  # iterations, one evaluation, overhead
    assert wall(1, 1) == pytest.approx(per_trial)
    assert wall(6, 1) == pytest.approx(6 * per_trial)
    assert wall(6, 2) == pytest.approx(3 * per_trial)
    assert wall(1, 4) == pytest.approx(per_trial)  # one trial cannot use four slots
    cost = estimate_cost(
        space,  # type: ignore[arg-type]
        [cfg] * 6,
        TIMING,
        concurrency=2,
        overhead_s=20.0,
        overhead_source="given",
    )
    # Each trial's wall time × 2 workers × 0.5 GPU (× 1 CPU) per worker.
    assert cost.gpu_hours == pytest.approx(6 * per_trial * 2 * 0.5 / 3600)
    assert cost.cpu_hours == pytest.approx(6 * per_trial * 2 * 1 / 3600)
    text = cost.describe()
    assert "0.500 s per iteration, 3.00 s per evaluation (given)" in text
    assert "6 trial(s), 2 at a time: about 3m39s of wall time" in text  # 3 × 73 s


def test_unmeasured_estimate_says_so(space: object) -> None:
    cfg = load_config("smoke")
    cost = estimate_cost(
        space,  # type: ignore[arg-type]
        [cfg] * 2,
        StepTiming(math.nan, math.nan, "the trials need a GPU and this machine has none"),
        concurrency=1,
        overhead_s=20.0,
        overhead_source="given",
    )
    assert cost.describe().startswith(
        "cost estimate: not measured (the trials need a GPU and this machine has none)"
    )
    assert math.isnan(cost.gpu_hours)


def test_overhead_and_speed_from_earlier_trials(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    assert overhead_from_ledger(ledger)[0] == TYPICAL_OVERHEAD_S
    assert timing_from_ledger(ledger) is None
    for key, (wall, train, iters) in {"a": (50.0, 30.0, 60), "b": (70.0, 40.0, 80)}.items():
        metrics = {"trial_wall_s": wall, "train_time_s": train, "iterations": iters}
        ledger.trials[key] = {"status": "FINISHED", "metrics": metrics}
    ledger.trials["c"] = {"status": "FAILED", "metrics": {"trial_wall_s": 900.0}}
    overhead, source = overhead_from_ledger(ledger)
    assert overhead == 25.0 and "2 finished trial(s)" in source  # median of 20 and 30
    timing = timing_from_ledger(ledger)
    assert timing is not None and timing.sec_per_iter == 0.5  # 30/60 and 40/80


def test_sweep_estimate_skips_finished_trials_and_gpu_spaces(
    space: object, tmp_path: Path
) -> None:
    plan = [(t, trial_config(space, t.overrides)) for t in grid_plan(space)]  # type: ignore[arg-type]
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.trials[plan[0][0].key] = {"status": "FINISHED", "metrics": {}}
    cost = sweep_estimate(
        space,  # type: ignore[arg-type]
        plan,
        plan[0][1],
        ledger,
        cache_dir=tmp_path,
        concurrency=1,
        measure=True,  # the space wants GPUs; this machine has none
    )
    assert len(cost.per_trial_s) == len(plan) - 1
    import torch

    if not torch.cuda.is_available():
        assert "not measured (the trials need a GPU" in cost.describe()
