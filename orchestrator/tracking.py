"""MLflow bookkeeping for a sweep, done from the driver only (one writer, no lock fights).

One experiment per space name, one parent run per sweep, one child run per trial. A ledger
file (``ledger.json`` in the sweep folder) maps trial keys to run ids, so a resumed sweep
reuses its parent and children instead of duplicating them, and runs of trials that died
with the driver are closed as KILLED rather than left RUNNING.

A tracking server that stops answering (a restart, a network cut) is waited for, in one
place (:class:`TrackingPolicy`): every call is retried for up to
``CORRTUNE_TRACKING_TIMEOUT_S`` seconds of continuous outage (default 300). A write that
failed once is first put in the sweep's tracking journal (``tracking-journal.jsonl`` beside
the ledger) and taken out when it lands, so nothing the sweep logged is lost even if the
driver dies meanwhile; past the timeout the tracker raises :class:`TrackingUnavailable`
(the sweep stops, resumable), further writes only go to the journal, and the next tracker
of the sweep (``--resume``) replays the journal before anything else. Replaying is
idempotent: metrics carry their original timestamps (MLflow drops an exact duplicate),
params and tags repeat their values, runs end with their original end time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
# Tags every run this tracker creates with a token of its own, so that a create retried
# after its answer was lost (the server stopped mid-request) finds the run it made.
RUN_TOKEN_TAG = "corrtune.run_token"
JOURNAL_NAME = "tracking-journal.jsonl"

T = TypeVar("T")


# ----------------------------------------------------------------- waiting for the server
@dataclass(frozen=True)
class TrackingPolicy:
    """How the tracker waits for a tracking server that does not answer.

    ``timeout_s``: how long an outage may last (from the first failed call, across calls)
    before the sweep stops; ``CORRTUNE_TRACKING_TIMEOUT_S``, default 300 s. Calls are
    retried after ``first_delay_s``, doubling up to ``max_delay_s``. MLflow's own HTTP
    retries would hide the outage inside one call (7 retries with backoff factor 2, about
    4 minutes, before it raises): for an HTTP store they are turned off, and a request
    times out after 30 s, unless the user set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (then MLflow retries inside each of these attempts).
    MLflow's line per ended run ("View run ... at") is turned off the same way.
    """

    timeout_s: float = 300.0
    first_delay_s: float = 0.5
    max_delay_s: float = 5.0

    TIMEOUT_ENV = "CORRTUNE_TRACKING_TIMEOUT_S"
    MLFLOW_CLIENT_SETTINGS = (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
        # Else every run that ends prints "View run ... at: URL" into the sweep's output.
        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
    )

    @classmethod
    def from_env(cls) -> TrackingPolicy:
        raw = os.environ.get(cls.TIMEOUT_ENV, "")
        try:
            timeout = float(raw) if raw else cls.timeout_s
        except ValueError:
            from detectors.config import ConfigError

            raise ConfigError(
                cls.TIMEOUT_ENV, "timeout", f"must be a number of seconds, not {raw!r}"
            ) from None
        return cls(timeout_s=max(0.0, timeout))


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer for the policy's timeout; what was not written
    waits in the journal."""


def unreachable_reason(exc: BaseException) -> str:
    """Why a call failed, when the server could not be reached or answered with a transient
    status (connection refused, timeout, 5xx, 429); "" for any other error (a real one)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            errno = re.findall(r"\[Errno -?\d+\][^\"')]*", str(seen))
            return errno[-1].strip() if errno else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    status = getattr(exc, "get_http_status_code", lambda: 0)()
    if isinstance(exc, MlflowException) and (status >= 500 or status == 429):
        return f"HTTP {status}"
    return ""


class Journal:
    """The writes that did not reach the server yet, in order, one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the end of a write the driver died in
                continue
        return out

    def add(self, op: str, args: dict[str, Any]) -> str:
        entry_id = uuid.uuid4().hex
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"id": entry_id, "op": op, "args": args}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry_id

    def remove(self, entry_id: str) -> None:
        left = [e for e in self.entries() if e.get("id") != entry_id]
        if not left:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in left))
        os.replace(tmp, self.path)


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
    """Creates and updates the parent and child runs of one sweep.

    Every call to the store goes through :meth:`_read` or :meth:`_write`, which wait for a
    server that does not answer as :class:`TrackingPolicy` says; ``notify`` gets a line when
    an outage starts and when it ends.
    """

    def __init__(
        self,
        *,
        uri: str,
        experiment: str,
        ledger: Ledger,
        policy: TrackingPolicy | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        for name in ("mlflow", "alembic"):  # schema-migration chatter on a new store
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri
        self.policy = policy or TrackingPolicy.from_env()
        if uri.startswith(("http://", "https://")):
            for name, value in TrackingPolicy.MLFLOW_CLIENT_SETTINGS:
                os.environ.setdefault(name, value)  # read by MLflow at each request
        # No mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI to the whole process,
        # and a later sweep in the same process (tests, notebooks) would follow it.
        self.client = MlflowClient(uri)
        self.ledger = ledger
        self.notify = notify or (lambda line: print(line, file=sys.stderr))
        self.journal = Journal(ledger.path.parent / JOURNAL_NAME)
        self.down_since: float | None = None  # when the current outage began
        self.given_up = False  # past the timeout: writes go to the journal only
        # Per trial: the highest step its run holds. A resumed trial reports again the
        # steps between its checkpoint and the interruption; they are not logged twice.
        self.last_step: dict[str, int] = {}
        try:
            # One attempt: a server that is not there when a sweep starts is a wrong
            # --tracking-uri far more often than an outage.
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
        except MlflowException as exc:  # a server that is not there, a store it cannot open
            from detectors.config import ConfigError

            why = re.findall(r"\[Errno -?\d+\][^\"')]*", str(exc)) or [str(exc)[:200]]
            raise ConfigError(
                "--tracking-uri", "tracking_uri", f"cannot use the MLflow store {uri}: {why[-1]}"
            ) from None
        self.replayed = self._replay()
        # MLflow 3 opens an experiment without this tag on its GenAI overview (an empty
        # traces dashboard); with it, on the runs table of a model-training experiment.
        self._write(
            "set_experiment_tag",
            experiment_id=self.experiment_id,
            key=EXPERIMENT_KIND[0],
            value=EXPERIMENT_KIND[1],
        )

    # ------------------------------------------------------------------ the policy
    def _attempt(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried while the server is unreachable, up to the policy's timeout
        of continuous outage (then :class:`TrackingUnavailable`)."""
        delay = self.policy.first_delay_s
        while True:
            if self.given_up:
                raise self.unavailable()
            try:
                result = fn()
            except Exception as exc:
                reason = unreachable_reason(exc)
                if not reason:
                    raise
                now = time.time()
                if self.down_since is None:
                    self.down_since = now
                    self.notify(
                        f"MLflow server {self.uri} does not answer ({reason}, on {what}); "
                        f"retrying for up to {self.policy.timeout_s:g} s "
                        f"({TrackingPolicy.TIMEOUT_ENV})"
                    )
                if now - self.down_since >= self.policy.timeout_s:
                    self.given_up = True
                    raise self.unavailable() from None
                time.sleep(min(delay, max(0.0, self.down_since + self.policy.timeout_s - now)))
                delay = min(delay * 2, self.policy.max_delay_s)
                continue
            if self.down_since is not None:
                self.notify(
                    f"MLflow server {self.uri} answers again after "
                    f"{time.time() - self.down_since:.0f} s; nothing was lost"
                )
                self.down_since = None
            return result

    def unavailable(self) -> TrackingUnavailable:
        waiting = len(self.journal.entries())
        return TrackingUnavailable(
            f"the MLflow server {self.uri} did not answer for {self.policy.timeout_s:g} s "
            f"({TrackingPolicy.TIMEOUT_ENV}); {waiting} update(s) wait in {self.journal.path} "
            "and are sent when the sweep resumes"
        )

    def _read(self, fn: Callable[[], T], what: str) -> T:
        return self._attempt(fn, what)

    def _write(self, op: str, **args: Any) -> None:
        """Apply write ``op``; one that fails is journaled first, then retried (and taken
        out of the journal when it lands). Past the timeout: journaled only."""
        if self.given_up:
            self.journal.add(op, args)
            return
        try:
            self._apply(op, args)
            return
        except Exception as exc:
            if not unreachable_reason(exc):
                raise
        entry_id = self.journal.add(op, args)
        self._attempt(lambda: self._apply(op, args), op)
        self.journal.remove(entry_id)

    def _apply(self, op: str, args: dict[str, Any]) -> None:
        client = self.client
        if op == "log_batch":
            client.log_batch(
                args["run_id"],
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in args.get("metrics", [])],
                params=[Param(k, v) for k, v in args.get("params", [])],
                tags=[RunTag(k, v) for k, v in args.get("tags", [])],
            )
        elif op == "set_terminated":
            client.set_terminated(args["run_id"], status=args["status"], end_time=args["end_time"])
        elif op == "update_run":
            client.update_run(args["run_id"], status=args["status"])
        elif op == "log_text":
            client.log_text(args["run_id"], args["text"], args["path"])
        elif op == "log_artifact":
            client.log_artifact(args["run_id"], args["local_path"])
        elif op == "set_experiment_tag":
            client.set_experiment_tag(args["experiment_id"], args["key"], args["value"])
        else:
            raise ValueError(f"unknown tracking journal operation {op!r}")

    def _replay(self) -> int:
        """Send what an earlier invocation of the sweep could not; the number sent."""
        entries = self.journal.entries()
        for entry in entries:
            op, args = str(entry["op"]), dict(entry["args"])
            self._attempt(lambda: self._apply(op, args), "replaying the journal")  # noqa: B023
            self.journal.remove(entry["id"])
        return len(entries)

    def _create_run(self, run_name: str, tags: dict[str, str]) -> str:
        """A new run; a create whose answer was lost is found by its token, not made twice."""
        token = uuid.uuid4().hex
        tags = tags | {RUN_TOKEN_TAG: token}
        tries = [0]

        def create() -> str:
            tries[0] += 1
            if tries[0] > 1:
                made = self.client.search_runs(
                    [self.experiment_id], filter_string=f"tags.{RUN_TOKEN_TAG} = '{token}'"
                )
                if made:
                    return str(made[0].info.run_id)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            return str(run.info.run_id)

        return self._attempt(create, "creating a run")

    def _terminate(self, run_id: str, status: str) -> None:
        self._write(
            "set_terminated", run_id=run_id, status=status, end_time=int(time.time() * 1000)
        )

    # ------------------------------------------------------------------------ parent
    def open_parent(self, *, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run_id = self.ledger.parent_run_id
        if run_id:
            self._write("update_run", run_id=run_id, status="RUNNING")
        else:
            run_id = self._create_run(run_name, tags)
            self.ledger.parent_run_id = run_id
            self.ledger.save()
            self.log_params(run_id, params)
        return run_id

    def close_parent(self, status: str, metrics: dict[str, Any] | None = None) -> None:
        run_id = self.ledger.parent_run_id
        if metrics:
            self.log_metrics(run_id, metrics)
        self._terminate(run_id, status)

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
            self._write("update_run", run_id=run_id, status="RUNNING")
            history = self._read(
                lambda: self.client.get_metric_history(run_id, STEP_METRIC), "reading a run"
            )
            self.last_step[key] = max((m.step for m in history), default=-1)
            entry["status"] = "RUNNING"
            self.ledger.save()
            return run_id
        run_id = self._create_run(
            run_name, {"mlflow.parentRunId": self.ledger.parent_run_id, **tags}
        )
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
            text = jsonio.dumps(content, indent=2, sort_keys=True, default=str)
            self._write("log_text", run_id=run_id, text=text, path=name)
        if error:
            self.set_tags(run_id, {"error": error[:4000]})
            entry["error"] = error[:4000]
        if stopped_at is not None:
            self.set_tags(run_id, {"corrtune.stopped_at": str(stopped_at)})
            entry["stopped_at"] = stopped_at
        self._terminate(run_id, status)
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
                self._terminate(entry["run_id"], "KILLED")
                entry["status"] = "KILLED"
                closed.append(key)
        if self.ledger.parent_run_id:
            known = {e["run_id"] for e in self.ledger.trials.values()}
            running = self._read(
                lambda: self.client.search_runs(
                    [self.experiment_id],
                    filter_string=(
                        f"tags.mlflow.parentRunId = '{self.ledger.parent_run_id}' "
                        "and attributes.status = 'RUNNING'"
                    ),
                ),
                "looking for runs left RUNNING",
            )
            for run in running:
                key = run.data.tags.get("corrtune.trial_key", run.info.run_id)
                self._terminate(run.info.run_id, "KILLED")
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
            self._write("log_artifact", run_id=self.ledger.parent_run_id, local_path=str(csv_path))
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
        batch = [[k, str(v)[:6000]] for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            self._write("log_batch", run_id=run_id, params=batch[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)  # kept in the journal: a replay is an exact duplicate
        batch = [[k, v, now, step] for k, v in mlflow_safe(metrics).items()]
        for i in range(0, len(batch), 500):
            self._write("log_batch", run_id=run_id, metrics=batch[i : i + 500])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._write("log_batch", run_id=run_id, tags=[[k, str(v)] for k, v in tags.items()])
