"""Run a search space: Ray Tune + Optuna choose trials, each trial is a Ray Train job.

The run sequence: read the space and the sweep's ledger (a resume restores the options the
sweep was started with), plan every trial, check Ray's internals, start (or join) Ray, open
the MLflow parent run, run the Tune experiment (:mod:`orchestrator.experiment`) whose
trials launch a ``TorchTrainer`` each (:mod:`orchestrator.trial`; their reports reach MLflow
through :mod:`orchestrator.callbacks`, in the driver), then close the runs, write the report
and say how the sweep ended: with the exact command that resumes it when it did not finish.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import ConfigError
from orchestrator import ray_compat, ray_runtime, resume
from orchestrator.budget import budget_spent, trial_cost
from orchestrator.callbacks import TrackingCallback, TrackingLost
from orchestrator.effects import headline
from orchestrator.experiment import build_scheduler, build_searcher, build_tuner
from orchestrator.ledger import Ledger, ledger_path, sweep_dir
from orchestrator.options import SweepOptions
from orchestrator.plan import Plan, describe_plan, plan_sweep, trials_at_once
from orchestrator.progress import SweepProgress
from orchestrator.report import Report, write_report_or_warn
from orchestrator.results import LOWER_IS_BETTER
from orchestrator.space import Space, load_space, trial_config
from orchestrator.tracking import SweepTracker, TrackingUnavailable, code_version, tracking_uri
from orchestrator.trial import TrialResolver, make_trainable, trial_ray_settings

__all__ = ["SweepOptions", "SweepResult", "run_sweep"]

Printer = Callable[[str], None]


@dataclass
class SweepResult:
    """``status``: FINISHED, STOPPED (its budget was spent), KILLED (interrupted) or FAILED
    (the driver failed, the tracking server stayed away past its timeout, or trials
    failed: ``failed`` names them)."""

    name: str
    parent_run_id: str
    trials: dict[str, dict[str, Any]]
    wall_time_s: float
    summary_path: Path | None
    status: str
    failed: list[str] = dataclasses.field(default_factory=list)


@dataclass
class _Sweep:
    """One invocation's resolved state, handed from step to step."""

    space: Space
    space_path: str | Path
    plan: Plan
    ledger: Ledger
    opts: SweepOptions
    printer: Printer = print
    console: Any = None
    restored: str = ""  # what --resume took from the ledger, said at the start

    @property
    def folder(self) -> Path:
        return sweep_dir(self.opts.workdir, self.space.name)

    @property
    def todo(self) -> Plan:
        finished = self.ledger.finished()
        return [(t, c) for t, c in self.plan if t.key not in finished]

    @property
    def remaining(self) -> int:
        if self.space.method == "tpe":
            return max(0, self.space.max_trials - len(self.ledger.finished()))
        return len(self.todo)

    def resume_command(self) -> str:
        storage = self.ledger.invocation.get("storage")
        return resume.resume_command(self.space_path, self.opts, storage)


def run_sweep(
    space_path: str | Path, opts: SweepOptions, printer: Printer = print, console: Any = None
) -> SweepResult:
    """Run (or resume) the sweep described by ``space_path``.

    Progress is a line per trial event through ``printer``, or, given a rich ``console``
    (a terminal), a live table of the trials drawn on it.
    """
    sweep = _prepare(space_path, dataclasses.replace(opts, workdir=opts.workdir.resolve()))
    sweep.printer, sweep.console = printer, console
    if sweep.restored:
        printer(sweep.restored)
    # Reach Ray before writing anything, so a wrong --address is one line and no state.
    started = False
    if sweep.remaining > 0:
        ray_compat.check()
        started = ray_runtime.start_ray(
            sweep.opts.address if sweep.opts.address != "local" else None,
            sweep.opts.verbose,
            sweep.opts.tuned_ray,
        )
    try:
        return _run(sweep)
    except TrackingUnavailable as exc:  # before or after the trials: nothing ran meanwhile
        sweep.ledger.save()
        printer(f"sweep stopped: {exc}; once it answers: {sweep.resume_command()}")
        parent = sweep.ledger.parent_run_id
        return SweepResult(sweep.space.name, parent, sweep.ledger.trials, 0.0, None, "FAILED")
    finally:
        if started:
            ray_runtime.stop_ray()


def _prepare(space_path: str | Path, opts: SweepOptions) -> _Sweep:
    """Space, ledger and plan of this invocation; every refusal happens here, before
    anything is written."""
    name = load_space(space_path).name
    path = ledger_path(opts.workdir, name)
    if path.exists() and not opts.resume:
        raise ConfigError(
            str(space_path),
            "name",
            f"a sweep named {name!r} already ran in {opts.workdir}; pass --resume to "
            f"continue it, or give the space another `name` to start a new one beside it",
        )
    ledger = Ledger.load(path)
    opts, restored = resume.restore(opts, ledger, name)
    space = load_space(space_path, preset=opts.preset, repeats=opts.repeats)
    if space.repeats < ledger.repeats:
        raise ConfigError(
            str(space_path),
            "repeats",
            f"sweep {name!r} already runs {ledger.repeats} seeds per configuration; it cannot "
            f"run fewer ({space.repeats}): raise repeats to add seeds",
        )
    plan = plan_sweep(space, opts.overrides)
    resume.check_space(space, ledger, sweep_dir(opts.workdir, name), opts.workdir)
    storage_given = opts.storage if not ledger.invocation else ledger.invocation.get("storage")
    ledger.storage = resume.checkpoint_storage(opts.storage, ledger, sweep_dir(opts.workdir, name))
    if opts.resume and not opts.storage and storage_given:  # said, as for the other options
        restored = (restored or "resuming") + f" (checkpoints: --storage {storage_given})"
    ledger.space_digest, ledger.space = space.digest(), space.definition()
    ledger.repeats = space.repeats
    ledger.invocation = resume.invocation(opts) | {"storage": storage_given}
    opts = dataclasses.replace(opts, storage=ledger.storage)
    return _Sweep(space, space_path, plan, ledger, opts, restored=restored)


def _run(sweep: _Sweep) -> SweepResult:
    space, ledger, opts, printer = sweep.space, sweep.ledger, sweep.opts, sweep.printer
    uri = tracking_uri(opts.tracking_uri, opts.workdir)
    tracker = SweepTracker(uri=uri, experiment=space.name, ledger=ledger, notify=printer)
    if tracker.replayed:
        printer(f"sent {tracker.replayed} update(s) an earlier run could not send to MLflow")
    killed = tracker.close_orphans()
    if killed:
        printer(f"closed {len(killed)} run(s) left RUNNING by an interrupted sweep as KILLED")
    tags = {
        "corrtune.space": space.name,
        "corrtune.space_hash": space.digest(),
        "corrtune.code_version": code_version(),
        "corrtune.base_preset": space.base,
    }
    parent_id = tracker.open_parent(
        run_name=f"{space.name}-sweep",
        params={
            "space.path": str(sweep.space_path),
            "space.method": space.method,
            "space.metric": space.metric,
            "space.base": space.base,
            "space.trials": len(sweep.plan) or space.max_trials,
        },
        tags=tags | {"corrtune.role": "sweep"},
    )
    tracker.set_tags(parent_id, {"corrtune.repeats": str(space.repeats)})
    printer(describe_plan(space, sweep.plan, ledger.finished()))
    printer(f"MLflow: {uri}  experiment {space.name!r}  parent run {parent_id}")
    t0 = time.time()
    status = _run_trials(sweep, tracker, tags) if sweep.remaining > 0 else "FINISHED"
    wall = time.time() - t0
    ledger.sweep_wall_s += wall
    ledger.save()
    failed = ledger.failed()
    if status == "FINISHED" and failed:
        status = "FAILED"
    # UNTRACKED: the tracker gave up on the server (what follows is journaled).
    ended = {"STOPPED": "FINISHED", "UNTRACKED": "FAILED"}.get(status, status)
    tracker.close_parent(
        ended,
        {
            "sweep_wall_s": ledger.sweep_wall_s,
            "trials_finished": len(ledger.finished()),
            "gpu_hours": sum(
                e.get("metrics", {}).get("gpu_hours", 0.0) for e in ledger.trials.values()
            ),
        },
    )
    report = _write_report(sweep)
    if report is not None:
        for line in headline(report.effects, space.metric, space.metric in LOWER_IS_BETTER):
            printer(line)
        tracker.log_effects(report.effects, report.arms, report.effects_csv)
    printer(_last_line(sweep, status, failed, tracker))
    summary = report.summary if report is not None else None
    status = "FAILED" if status == "UNTRACKED" else status
    return SweepResult(space.name, parent_id, ledger.trials, wall, summary, status, failed)


def _last_line(sweep: _Sweep, status: str, failed: list[str], tracker: SweepTracker) -> str:
    command = sweep.resume_command()
    if status == "UNTRACKED":
        return f"sweep stopped: {tracker.unavailable()}; once it answers: {command}"
    if status == "KILLED":
        return f"sweep interrupted; continue it with: {command}"
    if status == "STOPPED":
        return f"to go on, raise the budget in {sweep.space_path} and: {command}"
    if failed:
        return (
            f"sweep ended with {len(failed)} failed trial(s) ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}: the error is above and in each run's "
            f"`error` tag); after fixing the cause: {command}"
        )
    if status == "FAILED":
        return f"sweep failed; after fixing the cause: {command}"
    done = len(sweep.ledger.finished())
    return f"sweep {sweep.space.name!r} finished: {done} trial(s)"


def _write_report(sweep: _Sweep) -> Report | None:
    opts = sweep.opts
    preset = f" --preset {opts.preset}" if opts.preset else ""
    return write_report_or_warn(
        sweep.space,
        sweep.ledger,
        opts.results_dir or opts.workdir / "results",
        plan=sweep.plan,
        retry=f"corrtune report {sweep.space_path}{preset}",
        printer=sweep.printer,
    )


def _run_trials(sweep: _Sweep, tracker: SweepTracker, tags: dict[str, str]) -> str:
    """Run the trials still to run; returns FINISHED, STOPPED (budget spent), KILLED,
    UNTRACKED (the tracking server stayed away past the tracker's timeout: the trials were
    stopped, resumable) or FAILED (the driver itself failed)."""
    space, opts, todo = sweep.space, sweep.opts, sweep.todo
    cache_dir = opts.workdir / ".corrtune"
    base_cfg = todo[0][1] if todo else trial_config(space, {}, opts.overrides)
    # Make the dataset once in the driver so concurrent trials never race to generate it.
    if base_cfg.data.kind == "synthetic":
        from detectors.engine import build_datasets

        build_datasets(base_cfg, cache_dir)
    local = ray_runtime.is_local(opts.address if opts.address != "local" else None)
    num_trials = sweep.remaining
    try:
        cpus = ray_runtime.cluster_cpus()
        concurrency = trials_at_once(space, opts.max_concurrent, cpus)
        resolver = TrialResolver(space, todo, opts.overrides)
        progress = SweepProgress(
            name=space.name,
            metric=space.metric,
            total=num_trials,
            concurrency=min(concurrency, num_trials),
            printer=sweep.printer,
            console=sweep.console,
        )
        callback = TrackingCallback(
            tracker=tracker, resolver=resolver, space=space, progress=progress, tags=tags
        )
        trainable = make_trainable(
            resolver,
            space,
            str(opts.storage).rstrip("/") + "/trials",
            cache_dir,
            sweep.folder / "work",
            opts.inject_worker_fault,
            trial_ray_settings(local=local) if opts.tuned_ray else {},
        )
        tuner = build_tuner(
            space=space,
            trainable=trainable,
            searcher=build_searcher(space, todo, sweep.ledger),
            scheduler=build_scheduler(space, todo, base_cfg),
            num_trials=num_trials,
            concurrency=concurrency,
            storage=str(opts.storage),
            callbacks=[callback],
            stoppers=[TrackingLost(tracker)],
            ledger_path=sweep.ledger.path,
            reuse_actors=opts.tuned_ray,
            verbose=opts.verbose,
        )
        sweep.printer(
            f"running {num_trials} trial(s), {concurrency} at a time, on "
            f"{'a local' if local else 'the'} Ray cluster ({int(cpus)} CPUs)"
        )
        with progress:
            tuner.fit()
            # Tune returns normally after Ctrl-C (SIGINT) too: trials it never ended mean
            # the sweep was interrupted, whether or not any had started.
            unfinished = _close_unfinished(tracker, space, progress)
        if tracker.given_up:
            return "UNTRACKED"
        spent = budget_spent(tracker.ledger, space)
        if spent:
            not_run = num_trials - progress.done
            sweep.printer(
                f"{spent}: stopped the sweep, {not_run} trial(s) not run or not finished"
            )
            return "STOPPED"
        return "KILLED" if unfinished or progress.done < num_trials else "FINISHED"
    except KeyboardInterrupt:
        _close_unfinished(tracker, space)
        return "KILLED"
    except Exception:
        _close_unfinished(tracker, space)
        if tracker.given_up:  # raised in a Tune callback: Tune wraps it
            return "UNTRACKED"
        log = sweep.folder / "driver-error.log"
        log.write_text(traceback.format_exc())
        lines = [ln for ln in traceback.format_exc().strip().splitlines() if ln.strip()]
        sweep.printer(f"sweep failed: {lines[-1][:300]} (full traceback: {log})")
        return "FAILED"


def _close_unfinished(
    tracker: SweepTracker, space: Space, progress: SweepProgress | None = None
) -> list[str]:
    """Close runs of trials that did not end (the sweep stopped first) as KILLED, with the
    cost they ran up (a budget counts it)."""
    unfinished = [k for k, e in tracker.ledger.trials.items() if e["status"] == "RUNNING"]
    for key in unfinished:
        if progress is not None and key in progress.trials:
            progress.trials[key].status, progress.trials[key].ended = "KILLED", time.time()
        started = tracker.ledger.trials[key].get("started_at")
        cost = trial_cost(space, time.time() - float(started)) if started else {}
        tracker.finish_child(
            key, "KILLED", metrics=cost, error="sweep stopped before the trial ended"
        )
    return unfinished
