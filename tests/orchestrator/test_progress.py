"""The sweep's progress display without Ray: a line per event, or a live table."""

from __future__ import annotations

import io
import math
import pickle
import time

from rich.console import Console

from orchestrator.progress import SweepProgress, TrialState, format_s


def _progress(console: Console | None = None) -> tuple[SweepProgress, list[str]]:
    lines: list[str] = []
    progress = SweepProgress(
        name="demo", metric="AP", total=3, concurrency=1, printer=lines.append, console=console
    )
    return progress, lines


def _play(progress: SweepProgress) -> None:
    """Three trials: one done, one failed, one running at iteration 120 of 450."""
    t0 = time.time() - 100
    progress.trials["aaa"] = TrialState("aaa", "weight=0", 450, started=t0)
    progress.event("start", "start   aaa  weight=0")
    done = progress.trials["aaa"]
    done.iteration, done.metric, done.status, done.ended = 450, 0.2468, "DONE", t0 + 80
    progress.event("done", "done    aaa  weight=0  AP 0.2468  in 1m20s")
    progress.trials["bbb"] = TrialState("bbb", "weight=0.1", 450, status="FAILED", started=t0)
    progress.trials["bbb"].ended = t0 + 90
    progress.event("failed", "FAILED  bbb  weight=0.1: ValueError: boom")
    running = TrialState("ccc", "weight=0.2", 450, started=t0 + 90)
    running.iteration, running.loss, running.eta_s = 120, 1.234, 75.0
    progress.trials["ccc"] = running
    progress.event("running", "running ccc  it   120   27%  loss 1.234")


def test_lines_mode_prints_every_event_with_the_count_done() -> None:
    progress, lines = _progress()
    with progress:
        _play(progress)
    assert lines == [
        "[0/3] start   aaa  weight=0",
        "[1/3] done    aaa  weight=0  AP 0.2468  in 1m20s",
        "[2/3] FAILED  bbb  weight=0.1: ValueError: boom",
        "[2/3] running ccc  it   120   27%  loss 1.234",
    ]


def test_live_table_shows_each_trial_and_prints_only_failures() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=30)
    progress, lines = _progress(console)
    with progress:
        _play(progress)
        copy = pickle.loads(pickle.dumps(progress))  # Tune pickles its callbacks
    assert copy.trials.keys() == progress.trials.keys()
    text = out.getvalue()
    assert lines == []  # nothing through the line printer
    assert "FAILED  bbb  weight=0.1: ValueError: boom" in text  # printed above the table
    assert "start   aaa" not in text and "running ccc" not in text  # in the table instead
    final = text[text.rindex("sweep demo") :]  # the last frame drawn
    assert "2/3 ended, 1 running, 1 failed" in final
    rows = {line.split()[0]: line.split() for line in final.splitlines() if line.strip()}
    assert rows["ccc"][2:5] == ["RUNNING", "120/450", "1.234"]
    assert rows["ccc"][-1] == "1m15s"  # the running trial's ETA
    assert rows["aaa"][2:4] == ["DONE", "450/450"] and "0.2468" in rows["aaa"]
    assert rows["bbb"][2] == "FAILED"


def test_live_table_caps_its_rows_running_first() -> None:
    progress, _ = _progress()
    for i in range(10):
        state = TrialState(f"t{i}", "", 10, status="DONE" if i < 8 else "RUNNING")
        state.ended = time.time() + i if i < 8 else math.nan
        progress.trials[state.key] = state
    table, _ = progress.table(max_rows=4)
    keys = list(table.columns[0].cells)
    assert keys == ["t8", "t9", "t7", "t6"]  # running, then the latest ended
    assert table.caption == "… and 6 more ended trial(s)"


def test_sweep_eta_from_ended_trials() -> None:
    progress, _ = _progress()
    assert math.isnan(progress.sweep_eta())
    for key, wall in (("a", 60.0), ("b", 120.0)):
        state = TrialState(key, "", 1, status="DONE", started=0.0)
        state.ended = wall
        progress.trials[key] = state
    assert progress.sweep_eta() == 90.0  # mean 90 s × 1 trial left / 1 at a time


def test_format_s() -> None:
    assert [format_s(s) for s in (5, 75, 3700, math.nan)] == ["5s", "1m15s", "1h01m", "--"]
