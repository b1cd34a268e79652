"""What a running sweep shows: a line per trial event, or a live table on a terminal.

:class:`SweepProgress` holds the state of every trial the sweep has started (status,
iteration, loss, objective, ETA) and is updated by the driver-side Tune callback. How it is
shown is the only difference between the two modes:

- lines (pipes, CI, log files, ``--verbose``): every event is one line, as it happens;
- a live table (stdout is a terminal): one compact table, redrawn in place by rich from
  the current state once a second (times and ETAs move) and at trial events, at most
  ``REFRESH_PER_SECOND`` times a second (a frame of 30 trials costs milliseconds of CPU:
  results/bench/sweep_overhead.md); only failures and notes (a resumed trial) are printed
  above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Printer = Callable[[str], None]
REFRESH_PER_SECOND = 4  # at most, on trial events
IDLE_REFRESH_PER_SECOND = 1  # between events
# Event kinds that the live table prints above itself (the others only change the table).
NOTABLE = frozenset({"failed", "note"})


@dataclass
class TrialState:
    key: str
    label: str  # the trial's parameter values, short
    iterations: int  # planned training iterations
    status: str = "RUNNING"  # RUNNING, DONE, STOPPED (early, by ASHA), FAILED, KILLED
    iteration: int = 0
    loss: float = math.nan
    metric: float = math.nan  # the objective at the latest evaluation
    eta_s: float = math.nan  # training time left, from the training speed so far
    started: float = field(default_factory=time.time)
    ended: float = math.nan

    @property
    def wall_s(self) -> float:
        return (self.ended if math.isfinite(self.ended) else time.time()) - self.started


class SweepProgress:
    """Trial states of one sweep and their display (lines, or a live table on ``console``)."""

    def __init__(
        self,
        *,
        name: str,
        metric: str,
        total: int,
        concurrency: int,
        printer: Printer,
        console: Any = None,  # a rich Console: draw a live table on it instead of lines
    ) -> None:
        self.name, self.metric, self.total = name, metric, total
        self.concurrency = max(1, concurrency)
        self.printer = printer
        self.trials: dict[str, TrialState] = {}
        self.t0 = time.time()
        self._console = console
        self._live: Any = None
        self._drawn_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks (and so this) with the experiment's state; a terminal
        # and its refresh thread cannot be pickled, and a copy would have none to draw on.
        return self.__dict__ | {"_console": None, "_live": None}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SweepProgress:
        if self._console is not None:
            from rich.live import Live

            self._live = Live(
                _Renderable(self),
                console=self._console,
                refresh_per_second=IDLE_REFRESH_PER_SECOND,
                transient=False,  # the last table stays on screen
                redirect_stdout=True,  # other output scrolls above the table
                redirect_stderr=True,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()  # draws the final state once more
            self._live = None

    # ------------------------------------------------------------------ events
    def event(self, kind: str, line: str) -> None:
        """A trial event (start, running, resumed, done, stopped, failed, note): its line
        is printed in line mode; the live table prints only the notable ones."""
        if self._live is None:
            self.printer(f"[{self.done}/{self.total}] {line}")
            return
        if kind in NOTABLE:
            self._live.console.print(line, markup=False, highlight=False)
        if time.time() - self._drawn_at >= 1 / REFRESH_PER_SECOND:
            self._drawn_at = time.time()
            self._live.refresh()  # thread-safe: rich's refresh thread takes the same lock

    @property
    def done(self) -> int:
        return sum(t.status != "RUNNING" for t in self.trials.values())

    def sweep_eta(self) -> float:
        """Seconds until the last trial ends: the mean wall time of the trials that ended,
        times the trials left, over the trials run at once."""
        ended = [t.wall_s for t in self.trials.values() if t.status in ("DONE", "STOPPED")]
        if not ended:
            return math.nan
        return sum(ended) / len(ended) * (self.total - self.done) / self.concurrency

    # ------------------------------------------------------------------ the table
    def table(self, max_rows: int = 30) -> tuple[Any, str]:
        """The rich Table of the current state (running trials first, then the latest ended
        ones, at most ``max_rows`` rows) and its title line."""
        from rich.table import Table

        running = [t for t in self.trials.values() if t.status == "RUNNING"]
        ended = sorted(
            (t for t in self.trials.values() if t.status != "RUNNING"),
            key=lambda t: t.ended,
            reverse=True,
        )
        shown = (running + ended)[:max_rows]
        failed = sum(t.status == "FAILED" for t in self.trials.values())
        title = (
            f"sweep {self.name}: {self.done}/{self.total} ended, {len(running)} running"
            + (f", {failed} failed" if failed else "")
            + f" · {format_s(time.time() - self.t0)} elapsed"
            + f" · ETA {format_s(self.sweep_eta())}"
        )
        table = Table(box=None, pad_edge=False)
        for column, justify in (
            ("trial", "left"),
            ("parameters", "left"),
            ("status", "left"),
            ("iter", "right"),
            ("loss", "right"),
            (self.metric, "right"),
            ("time", "right"),
            ("ETA", "right"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for t in shown:
            table.add_row(
                t.key,
                t.label,
                t.status,
                f"{t.iteration}/{t.iterations}",
                _num(t.loss, 3),
                _num(t.metric, 4),
                format_s(t.wall_s),
                format_s(t.eta_s) if t.status == "RUNNING" else "",
            )
        hidden = len(self.trials) - len(shown)
        if hidden:
            table.caption = f"… and {hidden} more ended trial(s)"
        return table, title

    def render(self, max_rows: int = 30) -> Any:
        """The title line and the table, as one rich renderable."""
        from rich.console import Group
        from rich.text import Text

        table, title = self.table(max_rows)
        return Group(Text(title, style="bold"), table)


class _Renderable:
    """Rebuilt from the live state on every refresh (rich calls ``__rich__``)."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        height = self.progress._console.size.height if self.progress._console else 40
        return self.progress.render(max_rows=max(3, height - 6))


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def format_s(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``; NaN -> ``--``."""
    if not math.isfinite(seconds):
        return "--"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
