"""Processes corrtune starts end with it: the process-tree helpers, and `corrtune ui`
stopped by SIGINT and by SIGTERM with its MLflow server and that server's workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orchestrator.processes import alive, descendants, end_tree, session_members


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nobody_listens(port: int) -> bool:
    """True when a new server could listen on ``port`` now. With SO_REUSEADDR, as MLflow's
    server itself binds: connections the old server closed (TIME_WAIT, up to 60 s) do not
    hold the port, a process still listening on it does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def test_end_tree_ends_a_process_and_everything_below_it() -> None:
    # A shell with two children, one of which ignores SIGTERM (it gets SIGKILL).
    script = "sleep 300 & (trap '' TERM; sleep 300) & wait"
    parent = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.time() + 10
    while len(descendants(parent.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    below = descendants(parent.pid)
    assert len(below) >= 2 and all(alive(p) for p in below)
    end_tree(parent.pid, timeout=2.0)
    assert not alive(parent.pid)
    assert not any(alive(p) for p in below)


def test_end_tree_ends_the_orphans_of_a_session_it_leads() -> None:
    # The subshell starts a sleep and exits at once: that sleep is re-parented (no longer
    # below the leader) but stays in its session, as a server's worker whose parent died.
    script = "(sleep 300 &); sleep 300"
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.time() + 10
    while not (orphans := set(session_members(leader.pid)) - set(descendants(leader.pid))):
        assert time.time() < deadline, "the orphan never appeared"
        time.sleep(0.05)
    end_tree(leader.pid, timeout=2.0)
    assert not alive(leader.pid)
    assert not any(alive(p) for p in orphans)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_ends_with_its_server_and_workers(sig: signal.Signals, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Its own session, so a failure below can still end everything by process group.
    ui = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_sigint_as_a_terminal_has_it,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "the UI did not start"
                time.sleep(0.5)
        tree = descendants(ui.pid)
        assert len(tree) >= 2  # the MLflow server and its workers
        ui.send_signal(sig)  # to corrtune alone, as a terminal or process manager would
        assert ui.wait(timeout=60) == 130  # interrupted, by either signal
        deadline = time.time() + 30
        while any(alive(p) for p in tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in tree if alive(p)], "processes outlived corrtune ui"
        assert _nobody_listens(port), f"port {port} still has a listener after corrtune ui ended"
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        end_tree(ui.pid, timeout=2.0)


def _sigint_as_a_terminal_has_it() -> None:
    """In the child: SIGINT at its default, as under a terminal, whatever the test runner has
    (a runner started in the background of a script ignores SIGINT, and so would its child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sigint_blocked() -> None:
    _sigint_as_a_terminal_has_it()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "start"),
    [
        (signal.SIGTERM, _sigint_blocked),
        (signal.SIGINT, _sigint_blocked),
        (signal.SIGTERM, _sigint_ignored),  # SIGINT ignored: SIGTERM still stops
    ],
    ids=["SIGTERM-blocked", "SIGINT-blocked", "SIGTERM-ignored"],
)
def test_an_interrupt_arrives_though_the_parent_blocked_or_ignored_sigint(
    sig: signal.Signals, start: Any
) -> None:
    # The signal mask is inherited: Ray's process launcher, for one, blocks SIGINT in what it
    # starts. Blocked, a Ctrl-C (or a SIGTERM forwarded as one) stayed pending for ever.
    script = (
        "import sys, time\n"
        "from orchestrator.processes import terminate_as_interrupt\n"
        "try:\n"
        "    with terminate_as_interrupt():\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=start,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(sig)
        assert child.wait(timeout=20) == 130
    finally:
        if child.poll() is None:
            child.kill()
