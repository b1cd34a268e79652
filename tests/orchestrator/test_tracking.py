"""Ledger and MLflow bookkeeping without Ray: reuse, orphan closing, no duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.ledger import Ledger
from orchestrator.tracking import SweepTracker, tracking_uri


@pytest.fixture
def tracker(tmp_path: Path) -> SweepTracker:
    ledger = Ledger(tmp_path / "ledger.json")
    t = SweepTracker(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", ledger=ledger)
    t.open_parent(run_name="t-sweep", params={"a": 1}, tags={})
    return t


def _child(tracker: SweepTracker, key: str) -> str:
    return tracker.child_run(
        key, run_name=key, params={"x": 1}, tags={"corrtune.trial_key": key}, overrides={"x": 1}
    )


def test_resumed_trial_reuses_its_run(tracker: SweepTracker, tmp_path: Path) -> None:
    first = _child(tracker, "k1")
    tracker.finish_child("k1", "KILLED", error="stopped")
    reloaded = Ledger.load(tmp_path / "ledger.json")
    again = SweepTracker(uri=tracker.client.tracking_uri, experiment="t", ledger=reloaded)
    assert (
        again.open_parent(run_name="t-sweep", params={}, tags={}) == tracker.ledger.parent_run_id
    )
    assert _child(again, "k1") == first
    assert reloaded.trials["k1"]["overrides"] == {"x": 1}
    runs = again.client.search_runs([again.experiment_id])
    assert len(runs) == 2  # parent + one child, no duplicate


def test_close_orphans_closes_ledger_and_unknown_running_runs(tracker: SweepTracker) -> None:
    known = _child(tracker, "k1")
    # A run created just before a crash, before the ledger was saved: only MLflow knows it.
    client: MlflowClient = tracker.client
    lost = client.create_run(
        tracker.experiment_id,
        tags={"mlflow.parentRunId": tracker.ledger.parent_run_id, "corrtune.trial_key": "k2"},
    ).info.run_id
    closed = tracker.close_orphans()
    assert closed == ["k1", "k2"]
    assert client.get_run(known).info.status == "KILLED"
    assert client.get_run(lost).info.status == "KILLED"
    assert tracker.ledger.trials["k2"]["run_id"] == lost  # adopted: the resumed trial reuses it
    assert _child(tracker, "k2") == lost
    assert tracker.close_orphans() == ["k2"]  # it was RUNNING again, and is closed again


def test_relative_sqlite_uri_is_taken_from_the_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri("http://h:5000", tmp_path) == "http://h:5000"


def test_unreachable_tracking_server_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectors.config import ConfigError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not in minutes
    with pytest.raises(ConfigError, match=r"--tracking-uri.*127\.0\.0\.1:9.*Connection refused"):
        SweepTracker(
            uri="http://127.0.0.1:9", experiment="t", ledger=Ledger(tmp_path / "ledger.json")
        )


def test_stopped_trials_are_ended_for_a_resume(tracker: SweepTracker) -> None:
    _child(tracker, "k1")
    tracker.finish_child("k1", "FINISHED", metrics={"AP": 0.1}, stopped_at=2)
    entry = tracker.ledger.trials["k1"]
    assert (entry["status"], entry["stopped_at"]) == ("STOPPED", 2)
    assert tracker.ledger.finished() == {"k1"}  # not run again
    run = tracker.client.get_run(entry["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["corrtune.stopped_at"] == "2"


def test_ledger_keeps_the_storage(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", storage="/shared/ckpt")
    ledger.save()
    assert Ledger.load(tmp_path / "ledger.json").storage == "/shared/ckpt"


def test_a_resumed_trial_logs_no_step_twice(tracker: SweepTracker, tmp_path: Path) -> None:
    run_id = _child(tracker, "k1")
    for step in (5, 10, 15):
        assert tracker.log_trial_metrics("k1", {"progress": step / 20, "train/loss": 1.0}, step)
    tracker.finish_child("k1", "KILLED")
    # A new driver resumes the trial from its checkpoint at step 10: it reports 15 again.
    again = SweepTracker(
        uri=tracker.client.tracking_uri,
        experiment="t",
        ledger=Ledger.load(tmp_path / "ledger.json"),
    )
    assert _child(again, "k1") == run_id
    assert not again.log_trial_metrics("k1", {"progress": 0.75, "train/loss": 1.0}, 15)
    assert again.log_trial_metrics("k1", {"progress": 1.0, "train/loss": 0.5}, 20)
    steps = [m.step for m in again.client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [5, 10, 15, 20]


def test_experiments_open_as_model_training_in_the_mlflow_ui(tracker: SweepTracker) -> None:
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


class _Down:
    """Stands in for the tracker's client while the server is away: every call fails as
    MLflow's HTTP client does when nothing listens (a requests ConnectionError)."""

    def __getattr__(self, name: str) -> object:
        import requests

        def refuse(*args: object, **kwargs: object) -> None:
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

        return refuse


def test_an_outage_past_the_timeout_stops_with_the_writes_journaled_then_replayed(
    tracker: SweepTracker, tmp_path: Path
) -> None:
    from orchestrator.tracking import TrackingPolicy, TrackingUnavailable

    run_id = _child(tracker, "k1")
    said: list[str] = []
    tracker.notify = said.append
    tracker.policy = TrackingPolicy(timeout_s=0.3, first_delay_s=0.05, max_delay_s=0.1)
    store, tracker.client = tracker.client, _Down()  # type: ignore[assignment]
    with pytest.raises(TrackingUnavailable, match=r"did not answer for 0.3 s.*1 update\(s\)"):
        tracker.log_trial_metrics("k1", {"train/loss": 1.5}, step=2)
    assert tracker.given_up and len(said) == 1 and "does not answer" in said[0]
    tracker.finish_child("k1", "KILLED")  # after giving up: journaled only, no wait
    assert [e["op"] for e in tracker.journal.entries()] == ["log_batch", "set_terminated"]
    assert store.get_run(run_id).info.status == "RUNNING"  # nothing reached the store

    # The resumed sweep's tracker sends them first, in order, then the journal is gone.
    again = SweepTracker(
        uri=store.tracking_uri, experiment="t", ledger=Ledger.load(tmp_path / "ledger.json")
    )
    assert again.replayed == 2 and not again.journal.path.exists()
    history = store.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(2, 1.5)]
    assert store.get_run(run_id).info.status == "KILLED"


def test_a_short_outage_is_waited_for_and_loses_nothing(tracker: SweepTracker) -> None:
    from orchestrator.tracking import TrackingPolicy

    run_id = _child(tracker, "k1")
    said: list[str] = []
    tracker.notify = said.append
    tracker.policy = TrackingPolicy(timeout_s=30, first_delay_s=0.05, max_delay_s=0.1)
    store = tracker.client
    calls = [0]

    class Flaky(_Down):  # away for the first three calls, then back
        def __getattr__(self, name: str) -> object:
            calls[0] += 1
            return getattr(store, name) if calls[0] > 3 else super().__getattr__(name)

    tracker.client = Flaky()  # type: ignore[assignment]
    tracker.log_trial_metrics("k1", {"train/loss": 0.5}, step=4)
    assert calls[0] == 4 and not tracker.given_up
    assert "does not answer" in said[0] and "nothing was lost" in said[1] and len(said) == 2
    assert [m.step for m in store.get_metric_history(run_id, "train/loss")] == [4]
    assert not tracker.journal.path.exists()
