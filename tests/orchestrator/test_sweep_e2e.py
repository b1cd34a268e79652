"""End to end: a real sweep (embedded Ray, Tune + Optuna, Ray Train, MLflow in SQLite).

One six-trial sweep is shared by every assertion of this module (Ray Train start-up costs
~15-20 s per trial on two cores), and a second one is killed with SIGKILL and resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from detectors.config import ConfigError
from orchestrator.space import grid_plan, load_space
from orchestrator.sweep import SweepOptions, SweepResult, run_sweep

pytestmark = pytest.mark.slow

LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
SPACE = f"""
name: e2e
description: "λ axis on the smoke preset"
base: smoke
metric: {{name: AP, goal: maximize}}
parameters:
  loss.corr.weight: {{values: {LAMBDAS}}}
control: {{loss.corr.weight: 0.0}}
"""


def _runs(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return list(client.search_runs([exp.experiment_id], max_results=1000))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, Path, list[str]]:
    workdir = tmp_path_factory.mktemp("e2e")
    space = workdir / "e2e.yaml"
    space.write_text(SPACE)
    lines: list[str] = []
    fault = {_faulty_key(space): 2}
    opts = SweepOptions(
        overrides=OVERRIDES,
        workdir=workdir,
        inject_worker_fault=fault,
        storage=str(workdir / "store"),  # --storage: checkpoints and Tune's state go there
    )
    result = run_sweep(space, opts, printer=lines.append)
    return result, workdir, lines


OVERRIDES = {"train.iterations": 3, "train.checkpoint_every": 1, "train.log_every": 1}


def _faulty_key(space: Path) -> str:
    """The trial whose worker process dies once, after its report at iteration 2."""
    plan = grid_plan(load_space(space))
    return next(t.key for t in plan if t.overrides["loss.corr.weight"] == LAMBDAS[-1])


def test_one_parent_and_a_finished_child_per_trial(sweep: tuple) -> None:
    result, workdir, _ = sweep
    assert result.status == "FINISHED"
    runs = _runs(f"sqlite:///{workdir / 'mlflow.db'}", "e2e")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == len(LAMBDAS)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.parent_run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert all("final/AP" in c.data.metrics for c in children)
    weights = sorted(float(c.data.params["loss.corr.weight"]) for c in children)
    assert weights == LAMBDAS
    assert all(c.data.params["train.iterations"] == "3" for c in children)


def test_dead_worker_is_retried_from_its_checkpoint(sweep: tuple) -> None:
    _, workdir, _ = sweep
    ledger = json.loads((workdir / ".corrtune/sweeps/e2e/ledger.json").read_text())
    entry = ledger["trials"][_faulty_key(workdir / "e2e.yaml")]
    assert entry["status"] == "FINISHED"
    # Ray Train restarted the worker from a checkpoint (iteration 1, or 2 if the controller
    # took the last report before the process died), not from iteration 0.
    assert entry["resumed_from"] in (1, 2)
    others = [e for e in ledger["trials"].values() if e is not entry]
    assert all("resumed_from" not in e for e in others)


def test_ledger_maps_every_trial_to_its_run(sweep: tuple) -> None:
    result, workdir, _ = sweep
    ledger = json.loads((workdir / ".corrtune/sweeps/e2e/ledger.json").read_text())
    assert ledger["parent_run_id"] == result.parent_run_id
    assert len(ledger["trials"]) == len(LAMBDAS)
    assert {e["status"] for e in ledger["trials"].values()} == {"FINISHED"}
    assert len({e["run_id"] for e in ledger["trials"].values()}) == len(LAMBDAS)
    assert ledger["sweep_wall_s"] > 0


def test_storage_holds_checkpoints_and_tune_state(sweep: tuple) -> None:
    result, workdir, _ = sweep
    store = workdir / "store"
    for key in result.trials:  # every trial's Ray Train checkpoints
        assert list((store / "trials" / key).glob("checkpoint_*/checkpoint.pt")), key
    assert list(store.glob("tune-*/experiment_state-*.json"))  # Tune's experiment state
    assert not (workdir / ".corrtune/sweeps/e2e/ray").exists()  # not the default place
    ledger = json.loads((workdir / ".corrtune/sweeps/e2e/ledger.json").read_text())
    assert ledger["storage"] == str(store)  # a resume looks there


def test_resume_with_another_storage_is_refused(sweep: tuple) -> None:
    from detectors.config import ConfigError

    _, workdir, _ = sweep
    opts = SweepOptions(workdir=workdir, resume=True, storage=str(workdir / "elsewhere"))
    with pytest.raises(ConfigError, match=r"keeps its checkpoints in .*store"):
        run_sweep(workdir / "e2e.yaml", opts, printer=lambda _: None)


def test_where_each_trial_time_goes(sweep: tuple) -> None:
    result, workdir, _ = sweep
    for key, entry in result.trials.items():
        m = entry["metrics"]
        phases = [m["launch_s"], m["setup_s"], m["train_time_s"], m["teardown_s"]]
        assert all(p >= 0 for p in phases), (key, m)
        # Consecutive parts of the trial's wall time (1 s for clocks and report delivery).
        assert sum(phases) <= m["trial_wall_s"] + 1.0, (key, m)
        assert m["cpu_hours"] == pytest.approx(m["trial_wall_s"] / 3600)  # 1 worker, 1 CPU
    summary = (workdir / "results/e2e/summary.md").read_text()
    assert "- Per finished trial (medians): start-up (trial actor" in summary


def test_report_written(sweep: tuple) -> None:
    import pyarrow.parquet as pq

    result, workdir, _ = sweep
    out = workdir / "results" / "e2e"
    assert result.summary_path == out / "summary.md"
    summary = (out / "summary.md").read_text()
    assert "6/6 trials finished" in summary
    assert summary.count("**") >= 2  # a best value is marked
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted(r["loss.corr.weight"] for r in table) == LAMBDAS
    assert all(r["status"] == "FINISHED" and r["final/AP"] is not None for r in table)
    for png in ("AP_vs_weight.png", "AP_bars.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effects_against_the_control_are_written_printed_and_logged(sweep: tuple) -> None:
    import csv

    result, workdir, lines = sweep
    rows = list(csv.DictReader((workdir / "results/e2e/effects.csv").open()))
    arms = {r["arm"] for r in rows}
    assert arms == {f"weight={w}" for w in LAMBDAS[1:]}  # every arm against λ = 0
    assert {r["control"] for r in rows} == {"weight=0.0"}
    assert all(r["verdict"] == "" and r["ci_low"] == "" for r in rows)  # one seed: no verdict
    assert {r["n"] for r in rows if r["metric"] == "AP"} == {"1"}  # (NaN metrics pair none)
    summary = (workdir / "results/e2e/summary.md").read_text()
    assert "## Effects against the control" in summary
    assert "One seed per configuration: no interval" in summary
    text = "\n".join(lines)
    assert "effects against the control (AP, arm − control, paired seeds):" in text
    assert text.count("1 seed: no interval") == len(LAMBDAS) - 1
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert "effects.csv" in [a.path for a in client.list_artifacts(result.parent_run_id)]
    for key, entry in result.trials.items():
        metrics = client.get_run(entry["run_id"]).data.metrics
        is_control = entry["overrides"]["loss.corr.weight"] == 0.0
        assert ("effect/AP" in metrics) != is_control, key


def test_output_is_a_line_per_trial_event(sweep: tuple) -> None:
    _, _, lines = sweep
    text = "\n".join(lines)
    assert text.count("] start ") == len(LAMBDAS)
    assert text.count("] done ") == len(LAMBDAS)
    assert "FAILED" not in text
    assert "(pid=" not in text  # no raw Ray worker logs without --verbose


def test_second_run_without_resume_is_refused(sweep: tuple) -> None:
    from detectors.config import ConfigError

    _, workdir, _ = sweep
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(workdir / "e2e.yaml", SweepOptions(workdir=workdir), printer=lambda _: None)


def test_resume_of_a_finished_sweep_runs_nothing(sweep: tuple) -> None:
    result, workdir, _ = sweep
    lines: list[str] = []
    opts = SweepOptions(overrides=OVERRIDES, workdir=workdir, resume=True)
    again = run_sweep(workdir / "e2e.yaml", opts, printer=lines.append)
    assert again.parent_run_id == result.parent_run_id
    assert again.status == "FINISHED"
    assert "0 trial(s) to run" in "\n".join(lines)
    assert len(_runs(f"sqlite:///{workdir / 'mlflow.db'}", "e2e")) == len(LAMBDAS) + 1


# ----------------------------------------------------------------------- kill -9 and resume
KILL_SPACE = """
name: crash
base: smoke
metric: {name: AP, goal: maximize}
fixed: {train.checkpoint_every: 10, train.log_every: 10}
parameters:
  train.iterations: {values: [2, 300, 3]}
# One at a time, so the long trial starts only after the first one finished: it is
# certainly mid-training (≥ 290 iterations to go) when its first checkpoint appears.
max_concurrent: 1
"""


def _sweep_cmd(space: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "sweep", str(space), *extra]


def test_machine_restart_then_resume(tmp_path: Path, ray_procs: Any) -> None:
    """The driver is killed with SIGKILL mid-trial, and so is everything Ray ran for it;
    then `corrtune sweep --resume` in a fresh process, as after a reboot.

    A kill -9 of the driver takes the embedded Ray down with it: its GCS and raylet share
    the driver's fate and end within seconds (checked here, not assumed), and so do its
    workers, but for one that was still starting at the time of the kill, which can linger
    (seen once: two of its processes still there after 30 s). Those are
    killed, and the session folder deleted, as a reboot would; what is left is what a
    restart keeps: the working folder (ledger, MLflow store, checkpoints in the Ray storage).
    """
    space_path = tmp_path / "crash.yaml"
    space_path.write_text(KILL_SPACE)
    plan = grid_plan(load_space(space_path))
    long_key = next(t.key for t in plan if t.overrides["train.iterations"] == 300)
    ledger_path = tmp_path / ".corrtune/sweeps/crash/ledger.json"
    ckpt_root = tmp_path / ".corrtune/sweeps/crash/ray/trials" / long_key
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONUNBUFFERED"] = "1"
    # Each driver's Ray gets a temp root of its own (short: socket paths < 107 characters),
    # which marks its processes (they inherit RAY_TMPDIR) so that they can be found.
    first_tmp, second_tmp = (Path(tempfile.mkdtemp(prefix="ctk", dir="/tmp")) for _ in "12")
    try:
        _kill_then_resume(
            space_path,
            plan,
            long_key,
            ledger_path,
            ckpt_root,
            env,
            first_tmp,
            second_tmp,
            ray_procs,
        )
    finally:
        for root in (first_tmp, second_tmp):
            ray_procs.kill(root)
            shutil.rmtree(root, ignore_errors=True)


def _kill_then_resume(
    space_path: Path,
    plan: list[Any],
    long_key: str,
    ledger_path: Path,
    ckpt_root: Path,
    env: dict[str, str],
    first_tmp: Path,
    second_tmp: Path,
    ray_procs: Any,
) -> None:
    tmp_path = space_path.parent
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(
        _sweep_cmd(space_path),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env | {"RAY_TMPDIR": str(first_tmp)},
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        finished = [k for k, e in ledger.get("trials", {}).items() if e["status"] == "FINISHED"]
        # Two checkpoint folders: the first is then uploaded and registered with Ray Train's
        # controller (a folder alone can still be mid-upload when the kill lands).
        if finished and len(list(ckpt_root.glob("checkpoint_*"))) >= 2:
            break  # one trial done, the long one checkpointed and still running
        assert driver.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.5)
    else:
        pytest.fail("no trial finished and checkpointed in time")
    assert ray_procs.find(first_tmp)  # the driver's Ray: GCS, raylet, trial workers...
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    left = ray_procs.wait_gone(first_tmp, 30)
    core = [p for p in left if any(n in ray_procs.cmdline(p) for n in ("gcs_server", "raylet"))]
    assert not core, f"the embedded Ray outlived its driver: {left}"
    ray_procs.kill(first_tmp)  # stragglers, if any, as a reboot would
    assert not ray_procs.find(first_tmp)
    shutil.rmtree(first_tmp / "ray")  # its session folder, as a reboot wipes /tmp
    before = json.loads(ledger_path.read_text())
    assert before["trials"][long_key]["status"] == "RUNNING"  # the driver died mid-trial

    t0 = time.time()
    resumed = subprocess.run(
        _sweep_cmd(space_path, "--resume", "--max-concurrent", "2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env | {"RAY_TMPDIR": str(second_tmp)},
        timeout=400,
    )
    resume_s = time.time() - t0
    print(f"resume took {resume_s:.0f} s")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "left RUNNING by an interrupted sweep as KILLED" in resumed.stdout
    after = json.loads(ledger_path.read_text())
    assert after["parent_run_id"] == before["parent_run_id"]
    assert {e["status"] for e in after["trials"].values()} == {"FINISHED"}
    assert len(after["trials"]) == len(plan)
    for key, entry in before["trials"].items():  # the same run continued, no new one
        assert after["trials"][key]["run_id"] == entry["run_id"]
    finished_before = [k for k, e in before["trials"].items() if e["status"] == "FINISHED"]
    for key in finished_before:  # not re-run
        assert f"start   {key}" not in resumed.stdout
    # The interrupted trial continued from its Ray Train checkpoint, not from iteration 0.
    assert after["trials"][long_key]["resumed_from"] >= 10

    runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "crash")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["corrtune.trial_key"] for c in children]
    assert sorted(keys) == sorted(t.key for t in plan)  # one run per trial, no duplicate
    assert all(r.info.status == "FINISHED" for r in runs)  # nothing left RUNNING
    assert not ray_procs.wait_gone(second_tmp, 30)  # the resumed sweep ended its Ray


def test_ui_serves_the_sweep_runs_over_http(sweep: tuple) -> None:
    """`corrtune ui` on 127.0.0.1 against the sweep's store; runs read back over HTTP."""
    import socket
    import urllib.request

    result, workdir, _ = sweep
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    f"{base}/experiments/get-by-name?experiment_name=e2e"
                ) as r:
                    exp_id = json.load(r)["experiment"]["experiment_id"]
                break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "MLflow UI did not start"
                time.sleep(1)
        body = json.dumps(
            {
                "experiment_ids": [exp_id],
                "filter": f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
                "max_results": 100,
            }
        ).encode()
        request = urllib.request.Request(
            f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as r:
            runs = json.load(r)["runs"]
        assert len(runs) == len(LAMBDAS)
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


GROW_SPACE = """
name: grow
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
control: {loss.corr.weight: 0.0}
repeats: 1
"""


def test_more_seeds_on_resume_run_only_the_new_ones(tmp_path: Path) -> None:
    from orchestrator.plan import plan_and_estimate

    space = tmp_path / "grow.yaml"
    space.write_text(GROW_SPACE)
    opts = SweepOptions(overrides={"train.iterations": 2}, workdir=tmp_path)
    first = run_sweep(space, opts, printer=lambda _: None)
    assert first.status == "FINISHED" and len(first.trials) == 2
    before = {k: e["run_id"] for k, e in first.trials.items()}
    dry = plan_and_estimate(
        space,
        preset=None,
        overrides={"train.iterations": 2},
        workdir=tmp_path,
        local=True,
        repeats=3,
        measure=False,
    )
    rows = [line.rstrip() for line in dry.splitlines()]
    states = [line.split()[-1] for line in rows if line.endswith(("done", "to run"))]
    assert states.count("done") == 2 and "4 trial(s) to run" in dry  # what would be added
    lines: list[str] = []
    grown = run_sweep(
        space, SweepOptions(workdir=tmp_path, resume=True, repeats=3), printer=lines.append
    )
    text = "\n".join(lines)
    assert grown.status == "FINISHED", text
    assert "resuming with the options the sweep was started with: --set train.iterations=2" in text
    assert grown.parent_run_id == first.parent_run_id
    assert len(grown.trials) == 6
    for key, run_id in before.items():
        assert grown.trials[key]["run_id"] == run_id  # the first seeds are kept, not re-run
        assert f"start   {key}" not in text
    assert text.count("] start ") == 4  # only the new seeds ran
    runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "grow")
    assert len(runs) == 7  # one parent, six children: no duplicate
    assert sorted(e["seed"] for e in grown.trials.values()) == [0, 0, 1, 1, 2, 2]
    import csv

    rows = list(csv.DictReader((tmp_path / "results/grow/effects.csv").open()))
    ap = next(r for r in rows if r["metric"] == "AP")
    assert ap["n"] == "3" and ap["verdict"] != ""  # three pairs: a test and a verdict
    with pytest.raises(ConfigError, match="cannot run fewer"):
        run_sweep(space, SweepOptions(workdir=tmp_path, resume=True, repeats=2), lambda _: None)
