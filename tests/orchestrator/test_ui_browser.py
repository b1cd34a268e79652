"""``corrtune ui`` in a real browser: headless Chromium on both links it prints.

The store holds a sweep written through the sweep's own tracker (a parent and three
trials with their final AP; no Ray needed); ``corrtune ui --no-browser`` serves it on a
free loopback port (started and ended by process id), and Chromium renders each link
(``--dump-dom`` after the page's scripts ran). The compare view's screenshot is what
``docs/mlflow-compare.png`` shows: ``CORRTUNE_UPDATE_DOCS=1`` rewrites it.

Chromium is Debian's ``chromium`` package: the test installs it with apt-get when it runs
as root where apt-get exists (CI), else it skips saying how to install it.
"""

from __future__ import annotations

import os
import re
import shutil
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

from orchestrator.ledger import Ledger
from orchestrator.tracking import SweepTracker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get update && apt-get install -y chromium"
TRIALS = {"a1b2c3d4e5": 0.4123, "f6a7b8c9d0": 0.5234, "0e1f2a3b4c": 0.3345}
FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine's closed network refuses them
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",  # let the page's scripts fetch and render the runs
]


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        done = subprocess.run(["bash", "-c", INSTALL], capture_output=True, text=True, timeout=900)
        found = shutil.which("chromium")
        if done.returncode == 0 and found:
            return found
    pytest.skip(f"Chromium is not installed (Debian: `{INSTALL}`, as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_sweep(workdir: Path) -> str:
    """A parent run and three finished trial runs, as a sweep writes them; the parent id."""
    ledger = Ledger.load(workdir / ".corrtune/sweeps/uisweep/ledger.json")
    tracker = SweepTracker(
        uri=f"sqlite:///{workdir / 'mlflow.db'}", experiment="uisweep", ledger=ledger
    )
    parent = tracker.open_parent(
        run_name="uisweep-sweep",
        params={"space.metric": "AP", "space.method": "grid"},
        tags={"corrtune.role": "sweep", "corrtune.space": "uisweep"},
    )
    for i, (key, ap) in enumerate(TRIALS.items()):
        tracker.child_run(
            key,
            run_name=f"uisweep-{key}",
            params={"loss.corr.weight": 0.1 * i, "trial.key": key},
            tags={"corrtune.space": "uisweep", "corrtune.trial_key": key},
            overrides={"loss.corr.weight": 0.1 * i},
        )
        for step in (2, 4):
            tracker.log_trial_metrics(
                key, {"train/loss": 3.0 - step * ap, "progress": step / 4}, step
            )
        tracker.finish_child(key, "FINISHED", metrics={"AP": ap, "AP50": ap + 0.2})
    tracker.close_parent("FINISHED")
    return parent


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[dict[str, Any]]:
    parent = _write_sweep(tmp_path)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = tmp_path / "ui.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port), "--no-browser"],
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "the MLflow UI did not start:\n" + log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield {"parent": parent, "out": log.read_text(), "port": port}
    finally:
        proc.send_signal(signal.SIGTERM)  # corrtune ends its server and the server's workers
        proc.wait(timeout=60)


def _render(chromium: str, url: str, tmp: Path, screenshot: Path | None = None) -> str:
    profile = tempfile.mkdtemp(prefix="ctchrome", dir=tmp)
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *what, url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_both_links_show_the_sweep_in_chromium(
    chromium: str, ui: dict[str, Any], tmp_path: Path
) -> None:
    out = ui["out"]
    runs_url = re.search(r"runs, best first:\s+(\S+)", out)
    compare_url = re.search(r"compare the trials:\s+(\S+)", out)
    assert runs_url and compare_url, out
    assert ui["parent"] in out

    # The runs page: the sweep's parent run and its trials, best first, each with its AP.
    dom = _render(chromium, runs_url.group(1), tmp_path)
    names = [f"uisweep-{k}" for k in TRIALS]
    assert all(name in dom for name in names), dom[-3000:]
    assert "uisweep-sweep" in dom  # the parent
    best_first = sorted(TRIALS, key=TRIALS.__getitem__, reverse=True)
    positions = [dom.index(f"uisweep-{k}") for k in best_first]
    assert positions == sorted(positions), "not sorted by AP, best first"
    for ap in TRIALS.values():
        assert f"{ap}" in dom or f"{ap:.3f}" in dom, ap
    assert "final/AP" in dom  # the metric's column

    # The compare view: every trial (by name), their AP, the plots.
    dom = _render(chromium, compare_url.group(1), tmp_path)
    assert all(name in dom for name in names), dom[-3000:]
    assert all(f"{ap}" in dom or f"{ap:.3f}" in dom for ap in TRIALS.values())
    assert "Parallel Coordinates" in dom or "parallel-coordinates" in dom

    shot = tmp_path / "compare.png"
    _render(chromium, compare_url.group(1), tmp_path, screenshot=shot)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("CORRTUNE_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs/mlflow-compare.png")
