"""The driver-side Tune callbacks, the budget stopper and the searchers, without Ray
running: Tune's trial events are fed by hand."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.callbacks import NO_EVALUATION, BudgetStopper, TrackingCallback
from orchestrator.experiment import TPE_STUDY, build_searcher
from orchestrator.ledger import Ledger
from orchestrator.plan import plan_sweep
from orchestrator.progress import SweepProgress
from orchestrator.space import load_space
from orchestrator.tracking import SweepTracker
from orchestrator.trial import TrialResolver

SPACE = """
name: cb
base: smoke
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
repeats: 2
"""


class FakeTrial:
    """What the callback reads of a Tune trial."""

    def __init__(self, index: int) -> None:
        self.config = {"plan_index": index}
        self.last_result: dict[str, Any] = {}
        self.error_file = None


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "cb.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    plan = plan_sweep(space, {})
    ledger = Ledger(tmp_path / "ledger.json")
    tracker = SweepTracker(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="cb", ledger=ledger)
    tracker.open_parent(run_name="cb-sweep", params={}, tags={})
    lines: list[str] = []
    progress = SweepProgress(
        name="cb", metric="AP", total=len(plan), concurrency=2, printer=lines.append
    )
    callback = TrackingCallback(
        tracker=tracker,
        resolver=TrialResolver(space, plan, {}),
        space=space,
        progress=progress,
        tags={"corrtune.space": "cb"},
    )
    return {"cb": callback, "plan": plan, "ledger": ledger, "lines": lines, "space": space}


def _result(iteration: int, **extra: float) -> dict[str, float]:
    return {"iteration": iteration, "progress": iteration / 4, "train/loss": 1.0, **extra}


def test_a_trial_becomes_a_finished_child_run_with_its_seed(setup: dict[str, Any]) -> None:
    cb, plan, ledger = setup["cb"], setup["plan"], setup["ledger"]
    trial = FakeTrial(1)  # repeat 1 of λ = 0
    cb.on_trial_start(0, [], trial)
    for it in (2, 4):
        cb.on_trial_result(0, [], trial, _result(it, **({"val/AP": 0.3} if it == 4 else {})))
    trial.last_result = _result(4, **{"val/AP": 0.3, "train/elapsed_s": 2.0})
    cb.on_trial_complete(0, [], trial)
    key = plan[1][0].key
    entry = ledger.trials[key]
    assert entry["status"] == "FINISHED" and entry["metrics"]["AP"] == 0.3
    assert (entry["repeat"], entry["seed"]) == (1, 1)
    run = cb.tracker.client.get_run(entry["run_id"])
    assert run.data.params["train.seed"] == "1"
    assert run.data.metrics["final/AP"] == 0.3
    assert any(f"done    {key}" in line for line in setup["lines"])


def test_a_gpu_trials_free_memory_at_start_lands_in_the_ledger(setup: dict[str, Any]) -> None:
    cb, plan, ledger = setup["cb"], setup["plan"], setup["ledger"]
    trial = FakeTrial(0)
    cb.on_trial_start(0, [], trial)
    start = {"trial/worker_started_at": time.time(), "trial/setup_s": 0.5}
    cb.on_trial_result(0, [], trial, _result(2, **start, **{"trial/gpu_free_mb": 80000.0}))
    cb.on_trial_result(0, [], trial, _result(4, **{"val/AP": 0.3}))
    trial.last_result = _result(4, **{"val/AP": 0.3, "train/elapsed_s": 2.0})
    cb.on_trial_complete(0, [], trial)
    metrics = ledger.trials[plan[0][0].key]["metrics"]
    assert metrics["gpu_free_mb"] == 80000.0 and metrics["setup_s"] == 0.5


def test_a_trial_without_a_final_evaluation_fails_and_says_so(setup: dict[str, Any]) -> None:
    cb, plan, ledger = setup["cb"], setup["plan"], setup["ledger"]
    trial = FakeTrial(0)
    cb.on_trial_start(0, [], trial)
    trial.last_result = _result(4)
    cb.on_trial_complete(0, [], trial)
    entry = ledger.trials[plan[0][0].key]
    assert entry["status"] == "FAILED" and entry["error"] == NO_EVALUATION
    assert ledger.failed() == [plan[0][0].key]


def test_the_budget_stopper_reads_the_costs_in_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(SPACE + "budget: {cpu_hours: 0.001}\n")
    space = load_space(path)
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.trials = {"a": {"status": "RUNNING", "started_at": time.time()}}
    ledger.save()
    stopper = BudgetStopper(ledger.path, space)
    assert not stopper.stop_all()  # 0.001 CPU-hours is 3.6 s: not yet
    ledger.trials["a"]["started_at"] = time.time() - 10
    ledger.save()
    stopper.checked_at = 0.0  # it reads the ledger at most once a second
    assert stopper.stop_all()
    assert stopper("t", {}) is False  # never stops a single trial: the whole sweep


def test_a_resumed_tpe_search_starts_from_the_finished_trials(tmp_path: Path) -> None:
    import optuna

    path = tmp_path / "tpe.yaml"
    path.write_text(
        "name: tpe\nbase: smoke\nmethod: tpe\nmax_trials: 4\n"
        "parameters:\n  loss.corr.weight: {distribution: uniform, min: 0.0, max: 0.5}\n"
    )
    space = load_space(path)
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.trials = {
        f"k{i}": {
            "status": "FINISHED",
            "overrides": {"loss.corr.weight": w},
            "metrics": {"AP": 0.1 + w},
        }
        for i, w in enumerate([0.1, 0.4])
    }
    ledger.trials["k9"] = {"status": "FAILED", "overrides": {"loss.corr.weight": 0.3}}
    searcher = build_searcher(space, [], ledger)
    study = optuna.load_study(study_name=TPE_STUDY, storage=searcher._storage)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["loss__corr__weight"] for t in finished) == [0.1, 0.4]
    assert sorted(t.value for t in finished) == pytest.approx([0.2, 0.5])
    suggested = searcher.suggest("trial-1")  # the next one is sampled after those two
    assert "sample" in suggested
    assert len(optuna.load_study(study_name=TPE_STUDY, storage=searcher._storage).trials) == 3


def test_grid_searcher_enqueues_the_plan_in_order(setup: dict[str, Any]) -> None:
    searcher = build_searcher(setup["space"], setup["plan"], setup["ledger"])
    picks = [searcher.suggest(f"t{i}")["plan_index"] for i in range(len(setup["plan"]))]
    assert picks == list(range(len(setup["plan"])))
