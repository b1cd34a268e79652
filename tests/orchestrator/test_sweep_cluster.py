"""Sweeps on a Ray cluster: a real `ray start --head` on this machine (loopback only).

One cluster serves the module (its start costs ~10 s on two cores): `corrtune sweep
--address` joins it from a fresh process, and the ASHA and budget sweeps join it from this
one. The cluster is stopped whatever happens: its processes are found by the RAY_TMPDIR
they were started with and ended by process id (`ray stop`, which a user runs on their own
nodes, ends every Ray process of the machine: other tests' and other people's too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.space import grid_plan, load_space
from orchestrator.sweep import SweepOptions, run_sweep

pytestmark = pytest.mark.slow

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
# On a trusted loopback-only test cluster: no token to hand around (README: clusters).
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(ray_procs: Any) -> Iterator[dict[str, Any]]:
    """``{"address": "127.0.0.1:PORT", "temp_dir": Path, "env": ...}`` of a head node."""
    if not Path(RAY).exists():
        pytest.skip("the `ray` command line is not installed")
    # A short root: Ray's socket paths under it must stay below 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="ctray", dir="/tmp"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | CLUSTER_ENV
    start = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    try:
        # RAY_TMPDIR marks every process of this cluster (they inherit it) for the end.
        started = subprocess.run(
            start,
            env=env | {"RAY_TMPDIR": str(temp_dir)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        with pytest.MonkeyPatch.context() as patch:  # for the sweeps run in this process
            for name, value in CLUSTER_ENV.items():
                patch.setenv(name, value)
            patch.delenv("RAY_ADDRESS", raising=False)
            yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir, "env": env}
    finally:
        ray_procs.kill(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _runs(workdir: Path, experiment: str) -> list[Any]:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return list(client.search_runs([exp.experiment_id], max_results=100))


def _ledger(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / f".corrtune/sweeps/{name}/ledger.json").read_text())


# ---------------------------------------------------------------------------- joining it
JOIN_SPACE = """
name: joined
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.3]}
"""


def _run_on_a_terminal(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``cmd`` with a pseudo-terminal as its stdout and stderr; everything it wrote."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail("the sweep did not end in time:\n" + b"".join(chunks).decode())
        assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_sweep_joins_the_cluster_given_by_address(cluster: dict[str, Any], tmp_path: Path) -> None:
    """`corrtune sweep --address` from a fresh process, on a terminal (a live table)."""
    space = tmp_path / "joined.yaml"
    space.write_text(JOIN_SPACE)
    keys = sorted(t.key for t in grid_plan(load_space(space)))
    env = {k: v for k, v in cluster["env"].items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(space)]
    out = _run_on_a_terminal([*cmd, "--address", cluster["address"]], tmp_path, env, 400)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # terminal control sequences
    assert "on the Ray cluster (2 CPUs)" in text
    ledger = _ledger(tmp_path, "joined")
    assert sorted(ledger["trials"]) == keys
    assert {e["status"] for e in ledger["trials"].values()} == {"FINISHED"}
    # The trials ran on that cluster: its own session logs hold the Ray Train runs, named
    # after the trial keys (an embedded Ray would have logged them under /tmp/ray).
    logs = list(cluster["temp_dir"].glob("session_*/logs/train/ray-train-app-controller-*.log"))
    run_names = {json.loads(line)["run_name"] for log in logs for line in log.open()}
    assert set(keys) <= run_names
    # A terminal gets the live table, not a line per trial event.
    assert "] start " not in text and "] done " not in text
    final = text[text.rindex("sweep joined: ") :]
    assert final.startswith("sweep joined: 2/2 ended, 0 running")
    rows = [
        cells for cells in map(str.split, final.splitlines()) if cells[:1] in [[k] for k in keys]
    ]
    assert sorted(r[0] for r in rows) == keys and all(r[2] == "DONE" for r in rows)


# ---------------------------------------------------------------------------- ASHA
# Three trials, one at a time, each taking both CPUs of the cluster, evaluated every 2 of 4
# iterations. The first keeps every candidate box (score threshold 0: some overlap the
# objects, AP > 0); the second keeps none (threshold 0.99 on an untrained model: AP = 0).
# At ASHA's first rung (iteration 2, reduction factor 2) the second falls below the first
# and is stopped. The third can run only if the stopped trial gave its CPUs back.
ASHA_SPACE = """
name: asha
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.iterations: 4, train.eval_every: 2, train.log_every: 1}
parameters:
  nms.score_threshold: {values: [0.0, 0.99, 0.001]}
scheduler: {kind: asha, grace_period: 2, reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 2}
max_concurrent: 1
"""


def test_asha_stops_the_worse_trial_early(cluster: dict[str, Any], tmp_path: Path) -> None:
    space = tmp_path / "asha.yaml"
    space.write_text(ASHA_SPACE)
    good, bad, third = grid_plan(load_space(space))  # in plan order
    env = {k: v for k, v in cluster["env"].items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(space)]
    try:
        done = subprocess.run(
            [*cmd, "--address", cluster["address"]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    except subprocess.TimeoutExpired as exc:  # the third trial never got the CPUs
        pytest.fail(f"the sweep hung after ASHA stopped a trial:\n{exc.stdout}")
    text = done.stdout
    assert done.returncode == 0, text + done.stderr
    ledger = _ledger(tmp_path, "asha")
    assert ledger["trials"][good.key]["status"] == "FINISHED"
    assert ledger["trials"][bad.key]["status"] == "STOPPED", text
    assert ledger["trials"][bad.key]["stopped_at"] == 2
    assert ledger["trials"][good.key]["metrics"]["iterations"] == 4
    assert ledger["trials"][good.key]["metrics"]["AP"] > 0
    assert ledger["trials"][third.key]["status"] in ("FINISHED", "STOPPED")  # it ran
    assert f"stopped {bad.key}" in text and "at iteration 2/4 by ASHA" in text
    runs = {r.data.tags.get("corrtune.trial_key"): r for r in _runs(tmp_path, "asha")}
    stopped = runs[bad.key]
    assert stopped.info.status == "FINISHED"  # ended by design, not failed
    assert stopped.data.tags["corrtune.stopped_at"] == "2"
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
        stopped.info.run_id, "train/loss"
    )
    assert max(m.step for m in history) == 2  # fewer iterations than the 4 planned
    summary = (tmp_path / "results/asha/summary.md").read_text()
    assert "trials finished, " in summary and "stopped early by ASHA" in summary
    # A resume runs no stopped trial again.
    again = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200
    )
    assert again.returncode == 0 and "0 trial(s) to run" in again.stdout, again.stdout


# ---------------------------------------------------------------------------- budget
# A budget of 0.0005 CPU-hours (1.8 s of one CPU): spent while the first trial starts.
BUDGET_SPACE = """
name: budget
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.1, 0.2]}
max_concurrent: 1
budget: {cpu_hours: 0.0005}
"""


def test_budget_stops_the_sweep_and_says_so(cluster: dict[str, Any], tmp_path: Path) -> None:
    space = tmp_path / "budget.yaml"
    space.write_text(BUDGET_SPACE)
    lines: list[str] = []
    opts = SweepOptions(workdir=tmp_path, address=cluster["address"])
    result = run_sweep(space, opts, printer=lines.append)
    text = "\n".join(lines)
    assert result.status == "STOPPED", text
    assert "budget spent (" in text and "of 0.0005 CPU-hours): stopped the sweep" in text
    assert f"raise the budget in {space}" in text
    ledger = _ledger(tmp_path, "budget")
    statuses = [e["status"] for e in ledger["trials"].values()]
    assert statuses == ["KILLED"]  # the running trial was stopped; no other one started
    spent = sum(e["metrics"]["cpu_hours"] for e in ledger["trials"].values())
    assert spent >= 0.0005
    runs = _runs(tmp_path, "budget")
    assert {r.info.status for r in runs} == {"FINISHED", "KILLED"}  # parent, the trial
    assert len(runs) == 2
