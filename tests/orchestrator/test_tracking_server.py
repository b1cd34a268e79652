"""A sweep logging to a real ``mlflow server`` (loopback), which is stopped mid-sweep.

The test starts ``mlflow server`` (SQLite backend store, a local artifact folder it serves)
on a free port, by process id, in a process group of its own, and ends only that group.
A sweep of two concurrent smoke trials logs to it with ``--tracking-uri``; once both trials
have runs the server is killed, and started again on the same port and store 10 s later.
The sweep waits for it (CORRTUNE_TRACKING_TIMEOUT_S), finishes, and what the server holds,
read back over its REST API, equals what the same sweep gives with the local store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking import TrackingPolicy

pytestmark = pytest.mark.slow

SPACE = """
name: served
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.iterations: 30, train.log_every: 2, train.eval_every: 10}
parameters:
  loss.corr.weight: {values: [0.0, 0.3]}
max_concurrent: 2
"""
OUTAGE_S = 10
# Timings, and what names a folder of the test: not a property of the sweep.
VARYING = ("time", "_s", "elapsed", "sec_per_iter", "per_sec", "hours", "gpu_free")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", str(self.root / "artifacts")]
        log = (self.root / "server.log").open("a")
        # MLflow 3's job runner (huey consumers, for GenAI jobs) has no part in tracking:
        # 8 processes fewer to start on each restart (`corrtune ui` keeps MLflow's default).
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail("mlflow server did not start:\n" + (self.root / "server.log").read_text())

    def stop(self) -> None:
        """SIGKILL its process group (the server and its workers), by the id it started with."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _sweep(space: Path, cwd: Path, extra: list[str], env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(space), *extra]
    log = (cwd / "driver.log").open("w")
    return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _contents(client: MlflowClient, experiment: str, folder: Path) -> dict[str, Any]:
    """Each run by name: status, params, tags that name no folder, metric steps, the
    values of the metrics that do not measure time, artifact paths."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    out: dict[str, Any] = {"experiment tags": exp.tags.get("mlflow.experimentKind")}
    for run in client.search_runs([exp.experiment_id], max_results=100):
        steps, values = {}, {}
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            steps[key] = sorted(m.step for m in history)  # every step, once each
            if not any(v in key for v in VARYING):
                values[key] = [round(m.value, 5) for m in sorted(history, key=lambda m: m.step)]
        out[run.info.run_name] = {
            "status": run.info.status,
            "parent": "mlflow.parentRunId" in run.data.tags,
            "params": {k: v for k, v in run.data.params.items() if str(folder) not in v},
            "steps": steps,
            "values": values,
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        }
    return out


def test_a_sweep_on_an_mlflow_server_survives_its_restart(tmp_path: Path, ray_procs: Any) -> None:
    served, local = tmp_path / "served", tmp_path / "local"
    for folder in (served, local):
        folder.mkdir()
        (folder / "space.yaml").write_text(SPACE)
    server = MlflowServer(tmp_path / "server", _free_port())
    server.root.mkdir()
    roots = [Path(tempfile.mkdtemp(prefix="cttrk", dir="/tmp")) for _ in range(2)]
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env = base | {TrackingPolicy.TIMEOUT_ENV: "120", "PYTHONUNBUFFERED": "1"}
    ledger = served / ".corrtune/sweeps/served/ledger.json"

    def reporting() -> bool:
        # Both trials running and past their first report: the outage then falls among the
        # writes. (Stopped while the trials were still starting, on a fast machine the server
        # was back before anything was written, and there was no outage to see.)
        trials = json.loads(ledger.read_text())["trials"] if ledger.exists() else {}
        log = (served / "driver.log").read_text() if (served / "driver.log").exists() else ""
        return (
            len(trials) == 2
            and all(t["status"] == "RUNNING" for t in trials.values())
            and all(f"running {key}  it" in log for key in trials)
        )

    try:
        server.start()
        driver = _sweep(
            served / "space.yaml",
            served,
            ["--tracking-uri", server.uri],
            env | {"RAY_TMPDIR": str(roots[0])},
        )
        deadline = time.time() + 300
        while not reporting():
            assert driver.poll() is None and time.time() < deadline, (
                served / "driver.log"
            ).read_text()
            time.sleep(0.2)
        server.stop()
        down_at = time.time()
        time.sleep(OUTAGE_S)
        server.start()
        back_at = time.time()
        assert driver.wait(timeout=400) == 0, (served / "driver.log").read_text()
        # The same sweep on the local store, for comparison.
        reference = _sweep(local / "space.yaml", local, [], env | {"RAY_TMPDIR": str(roots[1])})
        assert reference.wait(timeout=400) == 0, (local / "driver.log").read_text()
        got = _contents(MlflowClient(server.uri), "served", served)  # over its REST API
    finally:
        server.stop()
        for root in roots:
            ray_procs.kill(root)
    out = (served / "driver.log").read_text()
    print(f"server down {back_at - down_at:.1f} s (its restart included)")
    said = [ln for ln in out.splitlines() if "does not answer" in ln or "answers again" in ln]
    assert len(said) == 2, out  # one line as the outage starts, one as it ends
    assert f"MLflow server {server.uri} does not answer" in said[0]
    assert "nothing was lost" in said[1]
    assert not (served / ".corrtune/sweeps/served/tracking-journal.jsonl").exists()

    want = _contents(MlflowClient(f"sqlite:///{local / 'mlflow.db'}"), "served", local)
    assert got["experiment tags"] == "custom_model_development"
    assert got == want
    children = [r for r in got.values() if isinstance(r, dict) and r["parent"]]
    assert len(children) == 2 and all(r["status"] == "FINISHED" for r in children)
    assert all(r["steps"]["train/loss"] == list(range(2, 31, 2)) for r in children)
    assert all({"config.json", "metrics.json"} <= set(r["artifacts"]) for r in children)
