"""Helpers for tests that start Ray processes of their own.

Such a test gives the processes it starts a ``RAY_TMPDIR`` of its own; every Ray process
(GCS, raylet, workers) inherits it, so the test can find exactly those processes by their
environment and end them by process id. ``ray stop`` would not do: it ends every Ray
process of the machine, other people's and other tests' included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest


def ray_processes(ray_tmpdir: Path) -> list[int]:
    """Ids of the running processes started with ``RAY_TMPDIR=ray_tmpdir`` (this one aside)."""
    marker = f"RAY_TMPDIR={ray_tmpdir}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != "Z" and (b"\0" + environ).find(b"\0" + marker) >= 0:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """The command line of process ``pid`` ("" once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(ray_tmpdir: Path, timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for those processes to end; the ids still running."""
    deadline = time.time() + timeout
    while (left := ray_processes(ray_tmpdir)) and time.time() < deadline:
        time.sleep(0.5)
    return left


def kill_ray_processes(ray_tmpdir: Path) -> None:
    """SIGKILL every process started with ``RAY_TMPDIR=ray_tmpdir``, by id."""
    for pid in ray_processes(ray_tmpdir):
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    wait_gone(ray_tmpdir, 10)


class RayProcesses:
    """The helpers above, for tests (a fixture: conftest modules are not imported)."""

    find = staticmethod(ray_processes)
    cmdline = staticmethod(cmdline)
    wait_gone = staticmethod(wait_gone)
    kill = staticmethod(kill_ray_processes)


@pytest.fixture(scope="session")
def ray_procs() -> RayProcesses:
    return RayProcesses()
