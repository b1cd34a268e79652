"""``--storage s3://bucket/prefix`` on an S3 server on loopback, then kill -9 and --resume.

The S3 server is moto's (``moto[s3]``, pinned in the lock) in server mode, started by
the test on a free port in a process group of its own and ended by that id. The bucket is
made by the test; the sweep reaches it through the standard AWS variables only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), as a user's would. Checkpoints and Tune's state land in the
bucket; the driver is killed with SIGKILL mid-trial (its embedded Ray with it) and
``--resume`` continues from the bucket: the finished trial is not run again, the
interrupted one goes on from its checkpoint in the bucket, one run per trial.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.space import grid_plan, load_space

pytestmark = pytest.mark.slow

BUCKET, PREFIX = "corrtune-test", "sweeps"
SPACE = """
name: ons3
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.checkpoint_every: 10, train.log_every: 10}
parameters:
  train.iterations: {values: [2, 150]}
max_concurrent: 1  # the long trial starts after the short one finished
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The AWS variables of a moto S3 server on loopback holding an empty bucket."""
    pytest.importorskip("moto", reason="moto is not installed: bash scripts/setup.sh")
    import boto3

    port = _free_port()
    log = tmp_path / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))
        client.create_bucket(Bucket=BUCKET)
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def _keys(env: dict[str, str]) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_storage_on_s3_then_kill_9_and_resume_from_the_bucket(
    tmp_path: Path, s3: dict[str, str], ray_procs: Any
) -> None:
    space_path = tmp_path / "ons3.yaml"
    space_path.write_text(SPACE)
    short, long = (t.key for t in grid_plan(load_space(space_path)))
    storage = f"s3://{BUCKET}/{PREFIX}"
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env = base | s3 | {"PYTHONUNBUFFERED": "1"}
    roots = [Path(tempfile.mkdtemp(prefix="cts3", dir="/tmp")) for _ in range(2)]
    ledger_path = tmp_path / ".corrtune/sweeps/ons3/ledger.json"
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(space_path)]

    def checkpoints(key: str) -> set[str]:
        prefix = f"{PREFIX}/trials/{key}/"
        return {
            k[len(prefix) :].split("/")[0]
            for k in _keys(s3)
            if k.startswith(prefix + "checkpoint_")
        }

    try:
        log = tmp_path / "first.log"
        driver = subprocess.Popen(
            [*cmd, "--storage", storage],
            cwd=tmp_path,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env | {"RAY_TMPDIR": str(roots[0])},
        )
        deadline = time.time() + 300
        while True:  # the short trial done, the long one past two checkpoints in the bucket
            ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
            done = ledger.get("trials", {}).get(short, {}).get("status") == "FINISHED"
            if done and len(checkpoints(long)) >= 2:
                break
            assert driver.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        ray_procs.wait_gone(roots[0], 30)
        ray_procs.kill(roots[0])  # stragglers of its embedded Ray, as a reboot would
        keys = _keys(s3)
        # Checkpoints (the model's file in each) and Tune's state are in the bucket.
        assert any(
            k.startswith(f"{PREFIX}/trials/{long}/checkpoint_") and k.endswith("checkpoint.pt")
            for k in keys
        )
        assert any(k.startswith(f"{PREFIX}/tune-") and "experiment_state" in k for k in keys), keys
        assert not (tmp_path / ".corrtune/sweeps/ons3/ray").exists()  # nothing local
        before = json.loads(ledger_path.read_text())
        assert before["trials"][long]["status"] == "RUNNING"

        resumed = subprocess.run(
            [*cmd, "--resume"],  # --storage comes back from the ledger
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env | {"RAY_TMPDIR": str(roots[1])},
            timeout=400,
        )
    finally:
        for root in roots:
            ray_procs.kill(root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (tmp_path / ".corrtune/sweeps/ons3/ray").exists()  # the bucket, again
    assert f"start   {short}" not in resumed.stdout  # the finished trial is not re-run
    after = json.loads(ledger_path.read_text())
    assert after["storage"] == storage  # remembered: --resume without --storage
    assert f"(checkpoints: --storage {storage})" in resumed.stdout  # ... and it says so
    assert {k: e["status"] for k, e in after["trials"].items()} == {
        short: "FINISHED",
        long: "FINISHED",
    }
    assert after["trials"][long]["resumed_from"] >= 10  # from its checkpoint in the bucket
    for key, entry in before["trials"].items():
        assert after["trials"][key]["run_id"] == entry["run_id"]  # the same run continued
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ons3")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # no duplicate
