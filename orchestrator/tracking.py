"""MLflow bookkeeping for a sweep, done from the driver only (one writer, no lock fights).

One experiment per space name, one parent run per sweep, one child run per trial. A ledger
file (``ledger.json`` in the sweep folder) maps trial keys to run ids, so a resumed sweep
reuses its parent and children instead of duplicating them, and runs of trials that died
with the driver are closed as KILLED rather than left RUNNING.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from detectors import jsonio
from orchestrator.effects import Arm, PairedEffect
from orchestrator.ledger import Ledger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Logged with every report of a trial: its step history is the run's history.
STEP_METRIC = "progress"


def tracking_uri(explicit: str | None, workdir: Path | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in the working folder
    (a relative SQLite path is taken relative to ``workdir``, default the current folder)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(((workdir or Path.cwd()) / uri[len("sqlite:///") :]).resolve())
    return uri


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def mlflow_safe(metrics: dict[str, Any]) -> dict[str, float]:
    """Finite numbers only; NaN stays out of MLflow (an undefined β is a missing value)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class SweepTracker:
    """Creates and updates the parent and child runs of one sweep."""

    def __init__(self, *, uri: str, experiment: str, ledger: Ledger) -> None:
        for name in ("mlflow", "alembic"):  # schema-migration chatter on a new store
            logging.getLogger(name).setLevel(logging.WARNING)
        # No mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI to the whole process,
        # and a later sweep in the same process (tests, notebooks) would follow it.
        self.client = MlflowClient(uri)
        self.ledger = ledger
        # Per trial: the highest step its run holds. A resumed trial reports again the
        # steps between its checkpoint and the interruption; they are not logged twice.
        self.last_step: dict[str, int] = {}
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
            # MLflow 3 opens an experiment without this tag on its GenAI overview (an empty
            # traces dashboard); with it, on the runs table of a model-training experiment.
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except MlflowException as exc:  # a server that is not there, a store it cannot open
            from detectors.config import ConfigError

            why = re.findall(r"\[Errno -?\d+\][^\"')]*", str(exc)) or [str(exc)[:200]]
            raise ConfigError(
                "--tracking-uri", "tracking_uri", f"cannot use the MLflow store {uri}: {why[-1]}"
            ) from None

    # ------------------------------------------------------------------------ parent
    def open_parent(self, *, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run_id = self.ledger.parent_run_id
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
            self.ledger.parent_run_id = run_id
            self.log_params(run_id, params)
            self.ledger.save()
        return run_id

    def close_parent(self, status: str, metrics: dict[str, Any] | None = None) -> None:
        run_id = self.ledger.parent_run_id
        if metrics:
            self.log_metrics(run_id, metrics)
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------------ children
    def child_run(
        self,
        key: str,
        *,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        overrides: dict[str, Any] | None = None,
    ) -> str:
        """The run of trial ``key``: reused from the ledger (or, should the driver have died
        between creating it and saving the ledger, found by its tag) when it exists."""
        entry = self.ledger.trials.get(key)
        if entry and entry.get("run_id"):
            run_id = str(entry["run_id"])
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            self.last_step[key] = max((m.step for m in history), default=-1)
            entry["status"] = "RUNNING"
            self.ledger.save()
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": self.ledger.parent_run_id, **tags},
        )
        run_id = run.info.run_id
        # Saved before anything else touches the run: the window in which a crash leaves a
        # run the ledger does not know is one call long, and close_orphans covers it.
        self.ledger.trials[key] = {
            "run_id": run_id,
            "status": "RUNNING",
            "name": run_name,
            "overrides": overrides or {},
        }
        self.ledger.save()
        self.log_params(run_id, params)
        return run_id

    def finish_child(
        self,
        key: str,
        status: str,
        metrics: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        error: str = "",
        stopped_at: int | None = None,
    ) -> None:
        """End trial ``key``'s run with ``status``. ``stopped_at``: the iteration at which the
        scheduler stopped it (the run is FINISHED; the ledger says STOPPED)."""
        entry = self.ledger.trials[key]
        run_id = entry["run_id"]
        if metrics:
            self.log_metrics(run_id, {f"final/{k}": v for k, v in metrics.items()})
            entry["metrics"] = mlflow_safe(metrics)
        for name, content in (artifacts or {}).items():
            self.client.log_text(
                run_id, jsonio.dumps(content, indent=2, sort_keys=True, default=str), name
            )
        if error:
            self.client.set_tag(run_id, "error", error[:4000])
            entry["error"] = error[:4000]
        if stopped_at is not None:
            self.client.set_tag(run_id, "corrtune.stopped_at", str(stopped_at))
            entry["stopped_at"] = stopped_at
        self.client.set_terminated(run_id, status=status)
        entry["status"] = "STOPPED" if stopped_at is not None else status
        self.ledger.save()

    def close_orphans(self) -> list[str]:
        """Close as KILLED the runs a dead driver left RUNNING: those the ledger holds as
        RUNNING and any child of this sweep's parent that MLflow still shows RUNNING (one
        created just before the crash, before the ledger was saved), adopting the latter
        into the ledger so a resumed trial reuses its run."""
        closed = []
        for key, entry in self.ledger.trials.items():
            if entry.get("status") == "RUNNING":
                self.client.set_terminated(entry["run_id"], status="KILLED")
                entry["status"] = "KILLED"
                closed.append(key)
        if self.ledger.parent_run_id:
            known = {e["run_id"] for e in self.ledger.trials.values()}
            for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.mlflow.parentRunId = '{self.ledger.parent_run_id}' "
                    "and attributes.status = 'RUNNING'"
                ),
            ):
                key = run.data.tags.get("corrtune.trial_key", run.info.run_id)
                self.client.set_terminated(run.info.run_id, status="KILLED")
                if run.info.run_id not in known and key not in self.ledger.trials:
                    self.ledger.trials[key] = {
                        "run_id": run.info.run_id,
                        "status": "KILLED",
                        "name": run.info.run_name,
                    }
                closed.append(key)
        if closed:
            self.ledger.save()
        return sorted(set(closed))

    def log_effects(
        self, effects: list[PairedEffect], arms: list[Arm], csv_path: Path | None
    ) -> None:
        """The effects table as an artifact of the parent run, and on each arm's child runs
        ``effect/<metric>``: the arm's mean paired difference (the UI sorts by it)."""
        if csv_path is not None and csv_path.exists():
            self.client.log_artifact(self.ledger.parent_run_id, str(csv_path))
        for arm in arms:
            mine = {f"effect/{e.metric}": e.diff for e in effects if e.arm == arm.label}
            for key in arm.trials:
                entry = self.ledger.trials.get(key)
                if entry and entry.get("run_id"):
                    self.log_metrics(entry["run_id"], mine)

    # ------------------------------------------------------------------------ logging
    def log_trial_metrics(self, key: str, metrics: dict[str, Any], step: int) -> bool:
        """Log a report of trial ``key`` at ``step``, unless its run already holds that step
        (a resumed trial reporting again what it reported before it was interrupted: the
        same values, from the same state). Returns whether it was logged."""
        if step <= self.last_step.get(key, -1):
            return False
        self.log_metrics(self.ledger.trials[key]["run_id"], metrics, step=step)
        self.last_step[key] = step
        return True

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in mlflow_safe(metrics).items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
