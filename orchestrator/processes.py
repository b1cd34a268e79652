"""Processes corrtune starts end with it, on SIGINT and SIGTERM alike.

A server corrtune runs for the user (``corrtune ui``'s MLflow server and the workers that
server starts) is started in a session of its own and ended, with every process below it,
by process id when corrtune ends; a SIGTERM (a closed terminal, a process manager,
``kill PID``) to corrtune is handled like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # prctl(2): a signal the child gets when its parent dies


def children_of() -> dict[int, list[int]]:
    """Parent pid -> the pids of its children, for every process this user can see."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    tree, found, todo = children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def end_tree(pid: int, timeout: float = 10.0) -> None:
    """End ``pid`` and every process below it: SIGTERM, then SIGKILL after ``timeout``."""
    pids = [pid, *descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.time() + timeout
        while time.time() < deadline:
            # Reap our own child (else it stays a zombie); the others are reaped elsewhere.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if alive(p)] + [d for d in descendants(pid) if d not in pids]
            if not pids:
                return
            time.sleep(0.1)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when corrtune dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within it, SIGTERM does what Ctrl-C does (whatever handles SIGINT at the time: the
    default KeyboardInterrupt, or Tune's graceful stop)."""

    def forward(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(command: Sequence[str]) -> int:
    """Run ``command`` (a server) until it exits or corrtune is interrupted (SIGINT or
    SIGTERM); either way it ends with every process it started. Returns its exit status
    (130 when interrupted)."""
    server = subprocess.Popen(list(command), start_new_session=True, preexec_fn=_die_with_parent)
    try:
        with terminate_as_interrupt():
            return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        end_tree(server.pid)
