"""Ctrl-C at every moment of a trial's life, then the printed resume command, verbatim.

Two rounds on one sweep of four smoke trials, two at a time, each driver a real
``corrtune sweep`` process interrupted with SIGINT:

1. trial A waits before reporting its final evaluation, trial B is past its first
   checkpoints: SIGINT. The printed command resumes the sweep, and is itself interrupted
   (round 2) once trial C waits after its last report (the run ending: Ray Train holds its
   final checkpoint, Tune and MLflow never got its final result) and trial D's worker has
   started but reported nothing.
2. The command printed then is run as it is, and must finish the sweep: one parent run,
   every child FINISHED with a final evaluation, one run per trial, no metric step twice.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.space import grid_plan, load_space
from orchestrator.trial import PAUSE_ENV

pytestmark = pytest.mark.slow

SPACE = """
name: ctrlc
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.checkpoint_every: 5, train.log_every: 5}
parameters:
  # A: 5 iterations; B: long enough to be mid-training at the first Ctrl-C; C: 6; D: 7.
  train.iterations: {values: [5, 80, 6, 7]}
max_concurrent: 2
"""
PAUSE_S = 12


def _cli(words: list[str]) -> list[str]:
    assert words[:2] == ["corrtune", "sweep"], words
    return [sys.executable, "-m", "orchestrator.cli", *words[1:]]


def _hint(output: str) -> list[str]:
    lines = [ln for ln in output.splitlines() if "continue it with: " in ln]
    assert len(lines) == 1, output
    return shlex.split(lines[0].split("continue it with: ", 1)[1])


def _wait(condition: Any, driver: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, log.read_text()
        assert time.time() < deadline, "timed out\n" + log.read_text()
        time.sleep(0.3)


def _interrupt(driver: subprocess.Popen, log: Path) -> str:
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=240) == 130, log.read_text()
    return log.read_text()


def test_ctrl_c_at_every_moment_then_the_printed_command(tmp_path: Path, ray_procs: Any) -> None:
    space_path = tmp_path / "ctrlc.yaml"
    space_path.write_text(SPACE)
    keys = {t.overrides["train.iterations"]: t.key for t in grid_plan(load_space(space_path))}
    a, b, c, d = keys[5], keys[80], keys[6], keys[7]
    folder = tmp_path / ".corrtune/sweeps/ctrlc"
    ledger = folder / "ledger.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    roots = [Path(tempfile.mkdtemp(prefix="cti", dir="/tmp")) for _ in range(3)]

    def start(words: list[str], n: int, pauses: dict[str, Any]) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"driver{n}.log"
        extra = {"RAY_TMPDIR": str(roots[n]), PAUSE_ENV: json.dumps(pauses)}
        driver = subprocess.Popen(
            _cli(words),
            cwd=tmp_path,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env | extra,
        )
        return driver, log

    def status(key: str) -> str:
        data = json.loads(ledger.read_text()) if ledger.exists() else {}
        return str(data.get("trials", {}).get(key, {}).get("status", ""))

    def checkpoints(key: str) -> int:
        return len(list((folder / "ray/trials" / key).glob("checkpoint_*")))

    try:
        # Round 1: A before its final report, B past its first checkpoints.
        first = ["corrtune", "sweep", str(space_path), "--preset", "smoke"]
        driver, log = start(first, 0, {a: {"at": "final_report", "seconds": PAUSE_S}})
        _wait(
            lambda: (folder / "work" / a / "paused-final_report").exists() and checkpoints(b) >= 2,
            driver,
            log,
        )
        out1 = _interrupt(driver, log)
        hint = _hint(out1)
        assert hint[-1] == "--resume" and hint[3:5] == ["--preset", "smoke"]  # exact command
        assert status(a) == status(b) == "KILLED"

        # Round 2: the printed command, interrupted once C is ending and D has started.
        pauses = {c: {"at": "end", "seconds": PAUSE_S}, d: {"at": "start", "seconds": 60}}
        driver, log = start(hint, 1, pauses)
        _wait(
            lambda: all(
                (folder / "work" / k / f"paused-{p['at']}").exists() for k, p in pauses.items()
            ),
            driver,
            log,
            timeout=400,
        )
        out2 = _interrupt(driver, log)
        assert status(a) == status(b) == "FINISHED", out2
        assert status(c) == status(d) == "KILLED", out2

        # The command printed now, as it is: the sweep completes.
        done = subprocess.run(
            _cli(_hint(out2)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env | {"RAY_TMPDIR": str(roots[2])},
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for root in roots:
            ray_procs.kill(root)
    for output in (out1, out2, done.stdout):
        assert "Trial trainable" not in output and "(pid=" not in output  # no Ray lines
    assert "resumed " + b in out2  # B went on from its checkpoint

    after = json.loads(ledger.read_text())
    assert {k: e["status"] for k, e in after["trials"].items()} == dict.fromkeys(
        keys.values(), "FINISHED"
    )
    assert all("AP" in e["metrics"] for e in after["trials"].values())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ctrlc")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["corrtune.trial_key"] for r in children) == sorted(keys.values())
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags
        assert "final/AP" in run.data.metrics
        for name in ("progress", "train/loss", "val/AP"):
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, name))
            assert steps and max(steps.values()) == 1, (run.data.tags["corrtune.trial_key"], name)
