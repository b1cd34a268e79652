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


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after "pid (comm)": state, ppid, pgrp, session, ...; None if gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children_of() -> dict[int, list[int]]:
    """Parent pid -> the pids of its children, for every process this user can see."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) and fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` but its leader: those below it and those that
    were (an orphan whose parent died first is re-parented, but keeps its session)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and int(entry.name) != sid
        and (fields := _stat_fields(entry.name))
        and fields[0] != "Z"
        and int(fields[3]) == sid
    ]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    tree, found, todo = children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _below(pid: int, leads_session: bool) -> list[int]:
    """Everything ``end_tree`` ends besides ``pid``: its descendants and, when ``pid`` leads
    a session, every other member of that session (orphans a dying server left behind)."""
    found = descendants(pid)
    if leads_session:
        found += [p for p in session_members(pid) if p not in found]
    return found


def end_tree(pid: int, timeout: float = 10.0) -> None:
    """End ``pid`` and every process below it (and in its session, when it leads one):
    SIGTERM, then SIGKILL after ``timeout``."""
    fields = _stat_fields(pid)
    leads_session = fields is not None and int(fields[3]) == pid  # decided before it dies
    pids = [pid, *_below(pid, leads_session)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.time() + timeout
        while time.time() < deadline:
            # Reap our own child (else it stays a zombie); the others are reaped elsewhere.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if alive(p)]
            pids += [d for d in _below(pid, leads_session) if d not in pids]
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
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            # SIGINT ignored (a script's `corrtune ... &` starts so): SIGTERM still stops.
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    # A blocked signal stays pending and never interrupts: a parent may have started corrtune
    # with SIGINT blocked (the mask is inherited; Ray's own process launcher blocks SIGINT in
    # what it starts), and then Ctrl-C, SIGINT and the forwarded SIGTERM did nothing.
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


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
