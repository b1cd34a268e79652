"""A driver that is slow to ask for a trial's results (a tracking-server outage, a loaded
machine) while the trial's Ray Train run ends: the trial must still finish.

Tune's function session takes Ray Train's results from a queue and puts them on a one-slot
queue that only it drains; when the trainable returned before Tune took Ray Train's last
result, Tune's own "done" marker filled that slot first and the trial actor deadlocked
(seen as a sweep that never ended, its last trial RUNNING, in the MLflow-server outage test).
``ray_compat.wait_results_taken`` makes the trainable wait for Tune to take it.

The scenario runs in a child process with a Ray of its own (``RAY_TMPDIR``), ended by
process id; ``held`` is the same trainable without the wait, which hangs (kept to show the
test reproduces the deadlock: it costs its timeout, so it runs only when asked for).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import ray
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    from orchestrator import ray_compat

    WAIT, STORAGE = sys.argv[1] == "wait", sys.argv[2]

    def loop(config):
        import ray.train
        for i in range(3):
            ray.train.report({"i": i})

    def trainable(config):
        TorchTrainer(
            loop,
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(
                name="inner", storage_path=STORAGE, callbacks=[TuneReportCallback()]
            ),
        ).fit()
        if WAIT:
            ray_compat.wait_results_taken()

    class SlowDriver(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("i") == 1:  # the one before the last: meanwhile Ray Train puts
                time.sleep(15)  # the last in the queue, the run ends and the trainable returns

    ray.init(num_cpus=2, include_dashboard=False)
    grid = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(name="outer", storage_path=STORAGE, callbacks=[SlowDriver()]),
    ).fit()
    print("finished", grid[0].metrics.get("i"), grid[0].error is None)
    """
)


def _run(mode: str, tmp_path: Path, ray_procs: Any, timeout: float) -> subprocess.CompletedProcess:
    (tmp_path / "scenario.py").write_text(SCRIPT)
    root = Path(tempfile.mkdtemp(prefix="ctslow", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_TMPDIR": str(root),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [sys.executable, str(tmp_path / "scenario.py"), mode, str(tmp_path / "storage")]
    try:
        return subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
        )
    finally:
        ray_procs.kill(root)


def test_a_trial_ends_although_the_driver_took_its_results_late(
    tmp_path: Path, ray_procs: Any
) -> None:
    done = _run("wait", tmp_path, ray_procs, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished 2 True" in done.stdout  # its last result (i = 2) reached Tune


@pytest.mark.skipif(
    os.environ.get("CORRTUNE_SHOW_RAY_DEADLOCK") != "1",
    reason="shows Tune's deadlock without the wait (costs 150 s): CORRTUNE_SHOW_RAY_DEADLOCK=1",
)
def test_without_the_wait_the_trial_deadlocks(tmp_path: Path, ray_procs: Any) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        _run("held", tmp_path, ray_procs, timeout=150)
