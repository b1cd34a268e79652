"""Two Ray nodes on this machine, one of them lost mid-trial (loopback only).

A head (1 CPU) and a second node (1 CPU and a ``second_node`` resource, so the test can
tell the nodes apart), each started with ``ray start`` and a ``RAY_TMPDIR`` of its own:
every process of a node inherits it, so a node is "lost" by SIGKILLing exactly its
processes, by id. One sweep of two trials, one at a time, each with two 1-CPU DDP workers,
which therefore run one on each node:

1. trial 1: the second node is killed after its checkpoint at iteration 4 and does not
   come back: the trial fails after ``CORRTUNE_WORKER_WAIT_S`` with the reason, and the
   sweep goes on;
2. the node is started again, trial 2 runs on both nodes, loses the node the same way, and
   the node comes back: Ray Train restarts the workers from the checkpoint, and the run
   keeps one history (no step twice, no second run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.space import grid_plan, load_space
from orchestrator.trial import PAUSE_ENV, WORKER_WAIT_ENV

pytestmark = pytest.mark.slow

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
SPACE = """
name: nodeloss
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.iterations: 12, train.checkpoint_every: 4, train.log_every: 2}
parameters:
  loss.corr.weight: {values: [0.0, 0.3]}
resources: {workers: 2, cpus_per_worker: 1}
max_concurrent: 1
"""
WAIT_S = 25  # CORRTUNE_WORKER_WAIT_S: how long a trial waits for its workers' node
PAUSE = {"at": "iteration", "iteration": 4, "seconds": 20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One ``ray start`` node whose processes carry ``RAY_TMPDIR=<root>``."""

    def __init__(self, head_port: int, env: dict[str, str], head: bool) -> None:
        # A short root: Ray's socket paths under it must stay below 107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="ctnode", dir="/tmp"))
        self.head, self.head_port, self.env = head, head_port, env

    def start(self) -> None:
        cmd = [RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        cmd += [
            f"--temp-dir={self.root}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ]
        if self.head:
            cmd += ["--head", f"--port={self.head_port}", "--num-cpus=1"]
            cmd += ["--include-dashboard=false"]
        else:
            cmd += [f"--address=127.0.0.1:{self.head_port}", "--num-cpus=1"]
            cmd += ["--resources", json.dumps({"second_node": 1})]
        started = subprocess.run(
            cmd,
            env=self.env | {"RAY_TMPDIR": str(self.root)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, started.stdout + started.stderr


def _nodes(address: str, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Alive node id -> its resources, as the cluster's GCS says (a short-lived driver)."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR', "
        "log_to_driver=False); print(json.dumps({n['NodeID']: n['Resources'] "
        "for n in ray.nodes() if n['Alive']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _wait(
    condition: Callable[[], Any], driver: subprocess.Popen, log: Path, timeout: float
) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, log.read_text()
        assert time.time() < deadline, "timed out\n" + log.read_text()
        time.sleep(0.2)


def test_a_lost_node_fails_its_trial_or_is_recovered_when_it_returns(
    tmp_path: Path, ray_procs: Any
) -> None:
    if not Path(RAY).exists():
        pytest.skip("the `ray` command line is not installed")
    space_path = tmp_path / "nodeloss.yaml"
    space_path.write_text(SPACE)
    first, second = (t.key for t in grid_plan(load_space(space_path)))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # Trusted loopback cluster: no token (README: clusters); the workers read the pause.
    env = base | {"RAY_AUTH_MODE": "disabled"}
    node_env = env | {PAUSE_ENV: json.dumps({first: PAUSE, second: PAUSE})}
    head, other = Node(port, node_env, head=True), Node(port, node_env, head=False)
    folder = tmp_path / ".corrtune/sweeps/nodeloss"
    log = tmp_path / "driver.log"
    driver = None

    def entry(key: str) -> dict[str, Any]:
        data = json.loads((folder / "ledger.json").read_text())
        return dict(data.get("trials", {}).get(key, {}))

    def checkpointed(key: str) -> bool:
        """Rank 0 waits after iteration 4 and Ray Train registered its checkpoint (what a
        restart resumes from: one only written to storage is not)."""
        snapshot = folder / "ray/trials" / key / "checkpoint_manager_snapshot.json"
        if not (folder / "work" / key / "paused-iteration").exists() or not snapshot.exists():
            return False
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (ValueError, KeyError):  # being written
            return False
        return any(r["metrics"].get("iteration") == PAUSE["iteration"] for r in results)

    try:
        head.start()
        other.start()
        nodes = _nodes(address, env)
        head_node = next(n for n, res in nodes.items() if "second_node" not in res)
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "sweep",
                str(space_path),
                "--address",
                address,
            ],
            cwd=tmp_path,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env | {WORKER_WAIT_ENV: str(WAIT_S), "PYTHONUNBUFFERED": "1"},
        )
        # 1. The node is lost and never comes back.
        _wait(lambda: checkpointed(first), driver, log, timeout=300)
        placed = entry(first)["nodes"]
        assert len(placed) == 1 and set(placed[0]) == set(nodes), placed  # one rank on each
        ray_procs.kill(other.root)
        lost_at = time.time()
        _wait(lambda: entry(first).get("status") == "FAILED", driver, log, timeout=WAIT_S + 120)
        failed_after = time.time() - lost_at
        # 2. The node comes back; the next trial runs on it, loses it, and gets it back.
        other.start()
        _wait(lambda: checkpointed(second), driver, log, timeout=300)
        ray_procs.kill(other.root)
        lost_at = time.time()
        other.start()
        _wait(lambda: len(entry(second).get("nodes", [])) == 2, driver, log, timeout=WAIT_S + 120)
        recovered_after = time.time() - lost_at
        assert driver.wait(timeout=300) == 1, log.read_text()  # a trial failed
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in (other, head):
            ray_procs.kill(node.root)
            shutil.rmtree(node.root, ignore_errors=True)
    out = log.read_text()
    print(f"node lost for good: trial FAILED after {failed_after:.1f} s")
    print(f"node lost and back: workers reporting again after {recovered_after:.1f} s")

    # Trial 1: FAILED with the reason, in the ledger, the run and the output.
    failed = entry(first)
    assert failed["status"] == "FAILED"
    reason = f"could not be placed within {WAIT_S} s ({WORKER_WAIT_ENV})"
    assert reason in failed["error"], failed["error"][-2000:]
    assert f"FAILED  {first}" in out and reason in out, out
    assert f"corrtune sweep {space_path} --address {address} --resume" in out
    # Trial 2: restarted from its checkpoint at iteration 4, on the node that came back.
    done = entry(second)
    assert done["status"] == "FINISHED", out
    assert done["resumed_from"] == 4
    before, after = done["nodes"]
    assert head_node in before and head_node in after and len(set(after)) == 2
    assert set(before) != set(after)  # the second rank on the node that came back (new id)
    assert f"resumed {second}" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nodeloss")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = {
        r.data.tags["corrtune.trial_key"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")
    }
    assert len(runs) == 3 and sorted(children) == sorted([first, second])  # no second run
    assert children[first].info.status == "FAILED"
    assert reason in children[first].data.tags["error"]
    run = children[second]
    assert run.info.status == "FINISHED" and "final/AP" in run.data.metrics
    for name in ("progress", "train/loss"):
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, name))
        assert max(steps.values()) == 1, (name, steps)  # one history: no step twice
        assert sorted(steps) == sorted(set(steps)) and max(steps) == 12
