"""The driver's side of a running sweep: Tune callbacks, the budget stopper, the searcher.

- :class:`TrackingCallback` turns Tune's trial events into MLflow child runs, ledger entries
  and the progress display, and times where each trial's wall time goes;
- :class:`BudgetStopper` ends the sweep once its trials used the space's budget, and
  :class:`TrackingLost` once the tracking server stayed away past the tracker's timeout;
- :class:`EvaluationsOnly` is Optuna's searcher fed only the reports that carry the
  objective.

Tune pickles its callbacks, stopper and searcher with the experiment state: they hold
plain data (and the tracker, whose client pickles), never a terminal or a lock.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper
from ray.tune.search.optuna import OptunaSearch

from detectors.config import ExperimentConfig, flatten, to_dict
from orchestrator.budget import budget_spent, trial_cost
from orchestrator.ledger import Ledger
from orchestrator.plan import short_value
from orchestrator.progress import SweepProgress, TrialState, format_s
from orchestrator.space import PlannedTrial, Space, short_name
from orchestrator.tracking import STEP_METRIC, SweepTracker
from orchestrator.trial import TrialResolver

NO_EVALUATION = "trial reported no final evaluation"


def trial_label(planned: PlannedTrial) -> str:
    """``weight=0.2 kind=spearman``: a trial's parameter values, short."""
    keys = list(planned.overrides)
    parts = [f"{short_name(k, keys)}={short_value(v)}" for k, v in planned.overrides.items()]
    return " ".join(parts) or "base"


class TrackingCallback(Callback):
    """Driver-side: MLflow child runs, the ledger, and the sweep's progress display.

    It also times where each trial's wall time goes: ``launch_s`` (trial start until the
    Ray Train worker runs: trial actor, controller, worker group), ``setup_s`` (data and
    model, in the worker), ``train_time_s`` (the training loop, evaluations and checkpoints
    included) and ``teardown_s`` (last report until Tune ends it). On GPUs it also keeps
    ``gpu_free_mb``, the device's free memory as the trial's worker started: on a shared GPU
    it shows whether the trial before released its memory.
    """

    def __init__(
        self,
        *,
        tracker: SweepTracker,
        resolver: TrialResolver,
        space: Space,
        progress: SweepProgress,
        tags: dict[str, str],
    ) -> None:
        self.tracker, self.resolver, self.space = tracker, resolver, space
        self.progress, self.tags = progress, tags
        self.timing: dict[str, dict[str, float]] = {}
        self.last_result_at: dict[str, float] = {}

    def _key(self, trial: Any) -> tuple[str, PlannedTrial, ExperimentConfig]:
        planned, cfg = self.resolver.resolve(trial.config)
        return planned.key, planned, cfg

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, planned, cfg = self._key(trial)
        params = flatten(cfg) | {"trial.key": key, "trial.repeat": planned.repeat}
        self.tracker.child_run(
            key,
            run_name=f"{self.space.name}-{key}",
            params=params,
            tags=self.tags | {"corrtune.trial_key": key},
            overrides=planned.overrides,
        )
        state = TrialState(key, trial_label(planned), cfg.train.iterations)
        self.progress.trials[key] = state
        entry = self.tracker.ledger.trials[key]
        entry |= {"repeat": planned.repeat, "seed": cfg.train.seed}
        entry["started_at"] = state.started  # the budget stopper counts its cost from here
        self.tracker.ledger.save()
        self.timing[key] = {}
        self.progress.event("start", f"start   {key}  {state.label}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        key, _, _ = self._key(trial)
        self.last_result_at[key] = time.time()
        entry = self.tracker.ledger.trials[key]
        step = int(result.get("iteration", 0))
        metrics = {k: v for k, v in result.items() if k.startswith(("train/", "val/"))}
        metrics[STEP_METRIC] = result.get("progress", 0)
        self.tracker.log_trial_metrics(key, metrics, step)
        state = self.progress.trials[key]
        timing = self.timing.setdefault(key, {})
        if "trial/worker_started_at" in result and "launch_s" not in timing:
            timing["launch_s"] = float(result["trial/worker_started_at"]) - state.started
            timing["setup_s"] = float(result["trial/setup_s"])
            if "trial/gpu_free_mb" in result:  # CUDA: free memory as its worker started
                timing["gpu_free_mb"] = float(result["trial/gpu_free_mb"])
        if result.get("trial/node_ids"):  # a (re)start of its workers: where each rank runs
            entry.setdefault("nodes", []).append(str(result["trial/node_ids"]).split(","))
            self.tracker.ledger.save()
            self.tracker.set_tags(entry["run_id"], {"corrtune.nodes": result["trial/node_ids"]})
        if "trial/resumed_from" in result and "resumed_from" not in entry:
            entry["resumed_from"] = int(result["trial/resumed_from"])
            self.tracker.ledger.save()
            self.progress.event(
                "note", f"resumed {key}  from its checkpoint at iteration {entry['resumed_from']}"
            )
        progress = float(result.get("progress", 0.0))
        # Training time only: the trial's wall time so far includes Ray start-up.
        elapsed = float(result.get("train/elapsed_s", math.nan))
        state.iteration = step
        state.loss = float(result.get("train/loss", math.nan))
        state.eta_s = elapsed * (1 - progress) / progress if progress > 0 else math.nan
        shown = f"loss {state.loss:.3f}"
        if f"val/{self.space.metric}" in result:
            state.metric = float(result[f"val/{self.space.metric}"])
            shown += f"  {self.space.metric} {state.metric:.4f}"
        self.progress.event(
            "running",
            f"running {key}  it {step:>5}  {progress:4.0%}  {shown}  trial ETA "
            f"{format_s(state.eta_s)}  sweep ETA {format_s(self.progress.sweep_eta())}",
        )

    def _costs(self, key: str, last: dict[str, Any]) -> dict[str, float]:
        state = self.progress.trials[key]
        now = time.time()
        state.ended = now
        costs = trial_cost(self.space, now - state.started)
        costs["train_time_s"] = float(last.get("train/elapsed_s", math.nan))
        if "train/eval_time_s" in last:  # evaluations, within train_time_s
            costs["eval_time_s"] = float(last["train/eval_time_s"])
        costs |= self.timing.get(key, {})
        if key in self.last_result_at:
            costs["teardown_s"] = now - self.last_result_at[key]
        return costs

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, _, cfg = self._key(trial)
        last = trial.last_result or {}
        final = {k[4:]: v for k, v in last.items() if k.startswith("val/")}
        final |= self._costs(key, last)
        state = self.progress.trials[key]
        reached = int(last.get("iteration", 0))
        final["iterations"] = reached
        metric = final.get(self.space.metric)
        artifacts = {"config.json": to_dict(cfg), "metrics.json": final}
        if metric is None:
            state.status = "FAILED"
            self.tracker.finish_child(key, "FAILED", metrics=final, error=NO_EVALUATION)
            self.progress.event("failed", f"FAILED  {key}  {state.label}: no evaluation")
        elif reached < cfg.train.iterations:  # the scheduler (ASHA) stopped it
            state.status = "STOPPED"
            self.tracker.finish_child(
                key, "FINISHED", metrics=final, artifacts=artifacts, stopped_at=reached
            )
            self.progress.event(
                "stopped",
                f"stopped {key}  {state.label}  at iteration {reached}/"
                f"{cfg.train.iterations} by ASHA  {self.space.metric} {metric:.4f}",
            )
        else:
            state.status = "DONE"
            self.tracker.finish_child(key, "FINISHED", metrics=final, artifacts=artifacts)
            self.progress.event(
                "done",
                f"done    {key}  {state.label}  {self.space.metric} {metric:.4f}  "
                f"in {format_s(final['trial_wall_s'])}",
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key, _, _ = self._key(trial)
        error = ""
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).exists():
            error = Path(error_file).read_text()
        costs = self._costs(key, trial.last_result or {})
        self.progress.trials[key].status = "FAILED"
        self.tracker.finish_child(key, "FAILED", metrics=costs, error=error or "trial failed")
        last_line = (error.strip().splitlines() or ["unknown error"])[-1]
        self.progress.event(
            "failed", f"FAILED  {key}  {self.progress.trials[key].label}: {last_line[:200]}"
        )


class BudgetStopper(Stopper):
    """Ends the sweep once its trials used the space's budget. It holds only the ledger's
    path and the space, and reads the costs the tracking callback wrote there."""

    def __init__(self, ledger_path: Path, space: Space) -> None:
        self.ledger_path, self.space = ledger_path, space
        self.checked_at = 0.0
        self.spent = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        # Tune asks on every step of its loop; the ledger is read at most once a second.
        if not self.spent and time.time() - self.checked_at >= 1.0:
            self.checked_at = time.time()
            self.spent = bool(budget_spent(Ledger.load(self.ledger_path), self.space))
        return self.spent


class TrackingLost(Stopper):
    """Ends the sweep once its tracker gave up on the tracking server (Tune would otherwise
    fail each trial in turn on the callback's error): the trials stop, resumable."""

    def __init__(self, tracker: SweepTracker) -> None:
        self.tracker = tracker

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.tracker.given_up


class EvaluationsOnly(OptunaSearch):
    """Optuna's searcher, given only the reports that carry the objective.

    Training reports arrive every ``log_every`` iterations, evaluations less often; Optuna
    needs the metric in every result it is given, so the others are not forwarded."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
