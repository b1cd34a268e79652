"""Run a search space: Ray Tune + Optuna choose trials, each trial is a Ray Train job.

The driver plans the trials, opens the MLflow parent run, starts (or joins) Ray, and runs a
Tune experiment whose function trainable launches a ``TorchTrainer`` (Train V2 pattern).
Workers call :func:`detectors.engine.run_training`; their reports reach Tune through
``TuneReportCallback`` and reach MLflow through :class:`TrackingCallback`, in the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.config import ExperimentConfig, flatten, to_dict
from orchestrator.progress import SweepProgress, TrialState, format_s
from orchestrator.space import (
    PlannedTrial,
    Space,
    load_space,
    optuna_distributions,
    optuna_name,
    short_name,
    static_plan,
    suggest_overrides,
    trial_config,
)
from orchestrator.tracking import Ledger, SweepTracker, code_version, tracking_uri
from orchestrator.trial import TrialResolver, make_trainable, trial_ray_settings

Printer = Callable[[str], None]


@dataclass(frozen=True)
class SweepOptions:
    preset: str | None = None  # replaces the space's base preset
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied to every trial
    resume: bool = False
    address: str | None = None  # Ray cluster; None = RAY_ADDRESS or an embedded local Ray
    # Ray storage (path or URI): checkpoints and Tune's state; default: the sweep's folder
    # (<workdir>/.corrtune/sweeps/<name>/ray), or where an earlier run of the sweep put them.
    storage: str | None = None
    tracking_uri: str | None = None
    workdir: Path = field(default_factory=Path.cwd)
    results_dir: Path | None = None  # default <workdir>/results
    verbose: bool = False
    max_concurrent: int = 0  # overrides the space's max_concurrent when > 0
    # False: Ray's own defaults instead of corrtune's settings that cut per-trial start-up
    # (trial_ray_settings, NO_API_SERVER, reused trial actors); benchmarks compare the two.
    tuned_ray: bool = True
    # Tests only: trial key -> iteration after whose report that trial's workers die once.
    inject_worker_fault: dict[str, int] = field(default_factory=dict)


@dataclass
class SweepResult:
    """``status``: FINISHED, STOPPED (its budget was spent), KILLED (interrupted) or FAILED."""

    name: str
    parent_run_id: str
    trials: dict[str, dict[str, Any]]
    wall_time_s: float
    summary_path: Path | None
    status: str


# --------------------------------------------------------------------------------- plan
def plan_sweep(space: Space, opts: SweepOptions) -> list[tuple[PlannedTrial, ExperimentConfig]]:
    """The trials a sweep will run, each with its fully resolved config (validates all).

    Grid and random search are planned in full here; TPE chooses its trials at run time,
    so its plan is empty and only the base config is validated.
    """
    from detectors.config import ConfigError

    base = trial_config(space, {}, opts.overrides)
    plan = [(t, trial_config(space, t.overrides, opts.overrides)) for t in static_plan(space)]
    if space.scheduler.kind == "asha" and any(
        not c.train.eval_every for c in [base] + [c for _, c in plan]
    ):
        # ASHA compares trials on the objective, which only evaluations report.
        raise ConfigError(
            space.path,
            "scheduler.kind",
            "asha needs intermediate evaluations: set train.eval_every (in `fixed`)",
        )
    return plan


def describe_space(space: Space) -> str:
    """One line per parameter: its values or distribution, and its condition."""
    lines = []
    for p in space.parameters:
        what = (
            f"values {list(p.values)}" if p.values else f"{p.distribution}({p.low:g}, {p.high:g})"
        )
        cond = "".join(f", when {k} in {list(v)}" for k, v in p.when)
        lines.append(f"  {p.key}: {what}{cond}")
    return "\n".join(lines)


def describe_plan(
    space: Space, plan: list[tuple[PlannedTrial, ExperimentConfig]], finished: set[str]
) -> str:
    keys = [p.key for p in space.parameters]
    lines = [
        f"sweep {space.name!r}: {space.description}".rstrip(": "),
        f"base preset {space.base}, method {space.method}, metric {space.metric} "
        f"({space.goal}), {len(plan) or space.max_trials} trials, {space.repeats} repeat(s)",
    ]
    header = ["#", "key", *keys, *(["seed"] if space.repeats > 1 else []), "iters", "state"]
    if space.method == "tpe":
        done = len(finished)
        lines += [
            f"TPE picks up to {space.max_trials} trial(s) at run time ({done} finished) from:",
            describe_space(space),
        ]
        return "\n".join(lines)
    rows = []
    for i, (trial, cfg) in enumerate(plan):
        row = [str(i), trial.key]
        row += [_short(trial.overrides.get(k, "-")) for k in keys]
        if space.repeats > 1:
            row.append(str(cfg.train.seed))
        row += [str(cfg.train.iterations), "done" if trial.key in finished else "to run"]
        rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines += [fmt.format(*header), *(fmt.format(*r) for r in rows)]
    todo = sum(t.key not in finished for t, _ in plan)
    images = sum(c.train.iterations * c.train.batch_size for t, c in plan if t.key not in finished)
    lines.append(f"{todo} trial(s) to run, {images:,} training images in all")
    return "\n".join(lines)


def plan_and_estimate(space_path: str | Path, opts: SweepOptions, *, measure: bool = True) -> str:
    """``--dry-run``: the trial plan and its cost estimate; starts nothing, writes nothing."""
    from orchestrator.estimate import sweep_estimate

    space = load_space(space_path, preset=opts.preset)
    plan = plan_sweep(space, opts)
    cache_dir = opts.workdir.resolve() / ".corrtune"
    ledger = Ledger.load(cache_dir / "sweeps" / space.name / "ledger.json")
    # An embedded Ray gets this machine's CPUs; a cluster's are unknown until the sweep
    # joins it, so there one trial at a time unless the space or --max-concurrent says.
    cpus = float(os.cpu_count() or 1) if _is_local(opts) else 0.0
    concurrency = _concurrency(space, opts, cpus)
    estimate = sweep_estimate(
        space,
        plan,
        trial_config(space, {}, opts.overrides),
        ledger,
        cache_dir=cache_dir,
        concurrency=concurrency,
        measure=measure,
    )
    return describe_plan(space, plan, ledger.finished()) + "\n" + estimate.describe()


# ------------------------------------------------------------------------ driver side
def trial_cost(space: Space, wall_s: float) -> dict[str, float]:
    """What a trial of ``wall_s`` seconds cost: its resources times its wall time."""
    res = space.resources
    return {
        "trial_wall_s": wall_s,
        "gpu_hours": wall_s * res.workers * res.gpus_per_worker / 3600,
        "cpu_hours": wall_s * res.workers * res.cpus_per_worker / 3600,
    }


def _tracking_callback_class() -> type:
    from ray.tune import Callback

    class TrackingCallback(Callback):
        """Driver-side: MLflow child runs, the ledger, and the sweep's progress display.

        It also times where each trial's wall time goes: ``launch_s`` (trial start until
        the Ray Train worker runs: trial actor, controller, worker group), ``setup_s``
        (data and model, in the worker), ``train_time_s`` (the training loop, evaluations
        and checkpoints included) and ``teardown_s`` (last report until Tune ends it).
        """

        def __init__(
            self,
            *,
            tracker: SweepTracker,
            resolver: TrialResolver,
            space: Space,
            progress: SweepProgress,
            tags: dict[str, str],
        ) -> None:
            self.tracker, self.resolver, self.space = tracker, resolver, space
            self.progress, self.tags = progress, tags
            self.timing: dict[str, dict[str, float]] = {}
            self.last_result_at: dict[str, float] = {}

        def _key(self, trial: Any) -> tuple[str, PlannedTrial, ExperimentConfig]:
            planned, cfg = self.resolver.resolve(trial.config)
            return planned.key, planned, cfg

        def _label(self, planned: PlannedTrial) -> str:
            keys = list(planned.overrides)
            parts = [f"{short_name(k, keys)}={_short(v)}" for k, v in planned.overrides.items()]
            return " ".join(parts) or "base"

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            key, planned, cfg = self._key(trial)
            params = flatten(cfg) | {"trial.key": key, "trial.repeat": planned.repeat}
            self.tracker.child_run(
                key,
                run_name=f"{self.space.name}-{key}",
                params=params,
                tags=self.tags | {"corrtune.trial_key": key},
                overrides=planned.overrides,
            )
            state = TrialState(key, self._label(planned), cfg.train.iterations)
            self.progress.trials[key] = state
            # The budget stopper counts a running trial's cost from here.
            self.tracker.ledger.trials[key]["started_at"] = state.started
            self.tracker.ledger.save()
            self.timing[key] = {}
            self.progress.event("start", f"start   {key}  {state.label}")

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            key, _, _ = self._key(trial)
            self.last_result_at[key] = time.time()
            entry = self.tracker.ledger.trials[key]
            step = int(result.get("iteration", 0))
            metrics = {k: v for k, v in result.items() if k.startswith(("train/", "val/"))}
            self.tracker.log_metrics(
                entry["run_id"], metrics | {"progress": result.get("progress", 0)}, step=step
            )
            state = self.progress.trials[key]
            timing = self.timing.setdefault(key, {})
            if "trial/worker_started_at" in result and "launch_s" not in timing:
                timing["launch_s"] = float(result["trial/worker_started_at"]) - state.started
                timing["setup_s"] = float(result["trial/setup_s"])
            if "trial/resumed_from" in result and "resumed_from" not in entry:
                entry["resumed_from"] = int(result["trial/resumed_from"])
                self.tracker.ledger.save()
                self.progress.event(
                    "note",
                    f"resumed {key}  from its checkpoint at iteration {entry['resumed_from']}",
                )
            progress = float(result.get("progress", 0.0))
            # Training time only: the trial's wall time so far includes Ray start-up.
            elapsed = float(result.get("train/elapsed_s", math.nan))
            state.iteration = step
            state.loss = float(result.get("train/loss", math.nan))
            state.eta_s = elapsed * (1 - progress) / progress if progress > 0 else math.nan
            shown = f"loss {state.loss:.3f}"
            if f"val/{self.space.metric}" in result:
                state.metric = float(result[f"val/{self.space.metric}"])
                shown += f"  {self.space.metric} {state.metric:.4f}"
            self.progress.event(
                "running",
                f"running {key}  it {step:>5}  {progress:4.0%}  {shown}  trial ETA "
                f"{format_s(state.eta_s)}  sweep ETA {format_s(self.progress.sweep_eta())}",
            )

        def _costs(self, key: str, last: dict[str, Any]) -> dict[str, float]:
            state = self.progress.trials[key]
            now = time.time()
            state.ended = now
            costs = trial_cost(self.space, now - state.started)
            costs["train_time_s"] = float(last.get("train/elapsed_s", math.nan))
            if "train/eval_time_s" in last:  # evaluations, within train_time_s
                costs["eval_time_s"] = float(last["train/eval_time_s"])
            costs |= self.timing.get(key, {})
            if key in self.last_result_at:
                costs["teardown_s"] = now - self.last_result_at[key]
            return costs

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            key, _, cfg = self._key(trial)
            last = trial.last_result or {}
            final = {k[4:]: v for k, v in last.items() if k.startswith("val/")}
            final |= self._costs(key, last)
            state = self.progress.trials[key]
            reached = int(last.get("iteration", 0))
            final["iterations"] = reached
            metric = final.get(self.space.metric)
            artifacts = {"config.json": to_dict(cfg), "metrics.json": final}
            if metric is None:
                state.status = "FAILED"
                self.tracker.finish_child(
                    key, "FAILED", metrics=final, error="trial reported no final evaluation"
                )
                self.progress.event("failed", f"FAILED  {key}  {state.label}: no evaluation")
            elif reached < cfg.train.iterations:  # the scheduler (ASHA) stopped it
                state.status = "STOPPED"
                self.tracker.finish_child(
                    key, "FINISHED", metrics=final, artifacts=artifacts, stopped_at=reached
                )
                self.progress.event(
                    "stopped",
                    f"stopped {key}  {state.label}  at iteration {reached}/"
                    f"{cfg.train.iterations} by ASHA  {self.space.metric} {metric:.4f}",
                )
            else:
                state.status = "DONE"
                self.tracker.finish_child(key, "FINISHED", metrics=final, artifacts=artifacts)
                self.progress.event(
                    "done",
                    f"done    {key}  {state.label}  {self.space.metric} {metric:.4f}  "
                    f"in {format_s(final['trial_wall_s'])}",
                )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            key, _, _ = self._key(trial)
            error = ""
            error_file = getattr(trial, "error_file", None)
            if error_file and Path(error_file).exists():
                error = Path(error_file).read_text()
            costs = self._costs(key, trial.last_result or {})
            self.progress.trials[key].status = "FAILED"
            self.tracker.finish_child(key, "FAILED", metrics=costs, error=error or "trial failed")
            last_line = (error.strip().splitlines() or ["unknown error"])[-1]
            self.progress.event(
                "failed",
                f"FAILED  {key}  {self.progress.trials[key].label}: {last_line[:200]}",
            )

    return TrackingCallback


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Where a state-API query goes on a Ray without a dashboard (the API server; the embedded
# one, or a cluster started without it): nowhere. Ray Train's placement-group cleaner asks
# the state API every second whether its controller lives; with no address it looks for a
# cluster for 40 s per question instead, and each trial's shutdown waits 12 s for it to
# stop. With an address where nothing listens, each question fails at once (the cleaner
# could not have told either way) and the cleaner stops when asked.
NO_API_SERVER = "http://127.0.0.1:0"


def _start_ray(address: str | None, verbose: bool, tuned: bool = True) -> bool:
    """Join ``address`` / ``RAY_ADDRESS`` or start an embedded Ray; True if this call
    connected (the caller then disconnects; a joined cluster keeps running)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": level,
        "include_dashboard": False,
    }
    env = {"PYTHONWARNINGS": "ignore"}
    if address:
        try:
            context = ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
            if tuned and not context.dashboard_url:  # a cluster without the state API too
                ray.shutdown()
                env["RAY_API_SERVER_ADDRESS"] = NO_API_SERVER  # for this job's processes
                ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            from detectors.config import ConfigError

            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                "--address", "address", f"cannot join the Ray cluster at {address!r}: {first}"
            ) from None
        return True
    # "local": always a fresh embedded instance. A bare ray.init() would attach to any
    # cluster a `ray start` left running on this machine (and die with it).
    if not tuned:
        ray.init(address="local", runtime_env={"env_vars": env}, **kwargs)
        return True
    # Variables set while Ray starts reach every worker process (the raylet starts them
    # with its own environment) without a job runtime_env, which would keep the raylet
    # from handing its pre-started worker processes to the first actors.
    env.setdefault("RAY_API_SERVER_ADDRESS", NO_API_SERVER)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update({k: v for k, v in env.items() if not os.environ.get(k)})
    try:
        ray.init(address="local", **kwargs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return True


def run_sweep(
    space_path: str | Path,
    opts: SweepOptions,
    printer: Printer = print,
    console: Any = None,
) -> SweepResult:
    """Run (or resume) the sweep described by ``space_path``.

    Progress is a line per trial event through ``printer``, or, given a rich ``console``
    (a terminal), a live table of the trials drawn on it.
    """
    from detectors.config import ConfigError

    space = load_space(space_path, preset=opts.preset)
    plan = plan_sweep(space, opts)
    workdir = opts.workdir.resolve()
    sweep_dir = workdir / ".corrtune" / "sweeps" / space.name
    ledger_path = sweep_dir / "ledger.json"
    if ledger_path.exists() and not opts.resume:
        raise ConfigError(
            str(space_path),
            "name",
            f"a sweep named {space.name!r} already ran in {workdir}; pass "
            "--resume to continue it, or delete "
            f"{sweep_dir.relative_to(workdir)} to start over",
        )
    ledger = Ledger.load(ledger_path)
    if ledger.space_digest and ledger.space_digest != space.digest():
        raise ConfigError(
            str(space_path),
            "parameters",
            f"the space changed since sweep {space.name!r} started (hash "
            f"{ledger.space_digest} -> {space.digest()}); rename it or delete "
            f"{sweep_dir.relative_to(workdir)} to start over",
        )
    ledger.space_digest = space.digest()
    ledger.storage = _storage(opts.storage, ledger, sweep_dir)  # saved with the first run
    opts = dataclasses.replace(opts, storage=ledger.storage)
    finished = ledger.finished()
    todo = [(t, c) for t, c in plan if t.key not in finished]
    remaining = len(todo) if space.method != "tpe" else space.max_trials - len(finished)
    # Reach Ray before writing anything, so a wrong --address is one line and no state.
    started = _start_ray(opts.address, opts.verbose, opts.tuned_ray) if remaining > 0 else False
    try:
        return _sweep(space, space_path, plan, todo, remaining, ledger, opts, printer, console)
    finally:
        if started:
            import ray

            ray.shutdown()


def _storage(given: str | None, ledger: Ledger, sweep_dir: Path) -> str:
    """Where Ray keeps the sweep's checkpoints: ``--storage``, else where an earlier run of
    the sweep kept them (a resume must look there), else ``<sweep folder>/ray``."""
    from detectors.config import ConfigError

    if given and "://" not in given:
        given = str(Path(given).expanduser().resolve())
    if given and ledger.storage and given != ledger.storage:
        raise ConfigError(
            "--storage",
            "storage",
            f"this sweep keeps its checkpoints in {ledger.storage}; resume it with that "
            "--storage (or none)",
        )
    return given or ledger.storage or str(sweep_dir / "ray")


def _sweep(
    space: Space,
    space_path: str | Path,
    plan: list[tuple[PlannedTrial, ExperimentConfig]],
    todo: list[tuple[PlannedTrial, ExperimentConfig]],
    remaining: int,
    ledger: Ledger,
    opts: SweepOptions,
    printer: Printer,
    console: Any = None,
) -> SweepResult:
    workdir = opts.workdir.resolve()
    sweep_dir = workdir / ".corrtune" / "sweeps" / space.name
    uri = tracking_uri(opts.tracking_uri, workdir)
    tracker = SweepTracker(uri=uri, experiment=space.name, ledger=ledger)
    killed = tracker.close_orphans()
    if killed:
        printer(f"closed {len(killed)} run(s) left RUNNING by an interrupted sweep as KILLED")
    finished = ledger.finished()
    tags = {
        "corrtune.space": space.name,
        "corrtune.space_hash": space.digest(),
        "corrtune.code_version": code_version(),
        "corrtune.base_preset": space.base,
    }
    parent_id = tracker.open_parent(
        run_name=f"{space.name}-sweep",
        params={
            "space.path": str(space_path),
            "space.method": space.method,
            "space.metric": space.metric,
            "space.base": space.base,
            "space.repeats": space.repeats,
            "space.trials": len(plan) or space.max_trials,
        },
        tags=tags | {"corrtune.role": "sweep"},
    )
    printer(describe_plan(space, plan, finished))
    printer(f"MLflow: {uri}  experiment {space.name!r}  parent run {parent_id}")
    t0 = time.time()
    status = "FINISHED"
    if remaining > 0:
        status = _run_tune(
            space, todo, remaining, opts, tracker, sweep_dir, tags, printer, console
        )
    wall = time.time() - t0
    ledger.sweep_wall_s += wall
    ledger.save()
    tracker.close_parent(
        "FINISHED" if status == "STOPPED" else status,
        {
            "sweep_wall_s": ledger.sweep_wall_s,
            "trials_finished": len(ledger.finished()),
            "gpu_hours": sum(
                e.get("metrics", {}).get("gpu_hours", 0.0) for e in ledger.trials.values()
            ),
        },
    )
    summary = _write_report(space, space_path, ledger, plan, opts, printer)
    if status == "KILLED":
        printer(f"sweep interrupted; continue it with: corrtune sweep {space_path} --resume")
    elif status == "FAILED":
        printer(f"sweep failed; after fixing the cause: corrtune sweep {space_path} --resume")
    elif status == "STOPPED":
        printer(
            f"to go on, raise the budget in {space_path} and: corrtune sweep {space_path} --resume"
        )
    return SweepResult(space.name, parent_id, ledger.trials, wall, summary, status)


def _write_report(
    space: Space,
    space_path: str | Path,
    ledger: Ledger,
    plan: list[tuple[PlannedTrial, ExperimentConfig]],
    opts: SweepOptions,
    printer: Printer,
) -> Path | None:
    """The end-of-sweep report. The runs are safe in MLflow and the ledger by now, so a
    report that cannot be written is a one-line warning naming the command that retries it,
    never a failed sweep."""
    from orchestrator.report import write_report

    results = opts.results_dir or opts.workdir.resolve() / "results"
    try:
        summary = write_report(space, ledger, results, plan=plan)
    except Exception as exc:  # a full disk, a file where a folder goes, a plotting bug...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        preset = f" --preset {opts.preset}" if opts.preset else ""
        printer(
            f"warning: the report in {results / space.name} was not written ({reason}); "
            f"the runs are saved: retry with: corrtune report {space_path}{preset}"
        )
        return None
    printer(f"report: {summary.parent}")
    return summary


def _run_tune(
    space: Space,
    todo: list[tuple[PlannedTrial, ExperimentConfig]],
    num_trials: int,
    opts: SweepOptions,
    tracker: SweepTracker,
    sweep_dir: Path,
    tags: dict[str, str],
    printer: Printer,
    console: Any = None,
) -> str:
    """Run the trials; returns FINISHED, STOPPED (budget spent), KILLED or FAILED."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Intermediate reports carry training metrics only; val/* arrives with evaluations.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not opts.verbose:  # a failed trial is one line from the callback, not a traceback
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    cache_dir = opts.workdir.resolve() / ".corrtune"
    base_cfg = todo[0][1] if todo else trial_config(space, {}, opts.overrides)
    # Make the dataset once in the driver so concurrent trials never race to generate it.
    if base_cfg.data.kind == "synthetic":
        from detectors.engine import build_datasets

        build_datasets(base_cfg, cache_dir)
    local = _is_local(opts)
    try:
        storage = str(opts.storage)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        concurrency = _concurrency(space, opts, cpus)
        metric = f"val/{space.metric}"
        mode = "max" if space.goal == "maximize" else "min"
        if space.method == "tpe":
            search = _make_searcher(
                OptunaSearch,
                history=_tpe_history(space, tracker),
                space=functools.partial(_define_by_run, space),  # picklable, unlike a lambda
                metric=metric,
                mode=mode,
                sampler=optuna.samplers.TPESampler(seed=0),
            )
        else:
            indices = list(range(len(todo)))
            search = _make_searcher(
                OptunaSearch,
                space={"plan_index": optuna.distributions.CategoricalDistribution(indices)},
                metric=metric,
                mode=mode,
                sampler=optuna.samplers.GridSampler({"plan_index": indices}, seed=0),
                # Enqueued in plan order, so trials run in the order --dry-run shows.
                points_to_evaluate=[{"plan_index": i} for i in indices],
            )
        resolver = TrialResolver(space, todo, opts.overrides)
        progress = SweepProgress(
            name=space.name,
            metric=space.metric,
            total=num_trials,
            concurrency=min(concurrency, num_trials),
            printer=printer,
            console=console,
        )
        callback = _tracking_callback_class()(
            tracker=tracker, resolver=resolver, space=space, progress=progress, tags=tags
        )
        trainable = make_trainable(
            resolver,
            space,
            storage.rstrip("/") + "/trials",
            cache_dir,
            sweep_dir / "work",
            opts.inject_worker_fault,
            trial_ray_settings(local=local) if opts.tuned_ray else {},
        )
        scheduler = None
        if space.scheduler.kind == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(
                time_attr="iteration",
                metric=metric,
                mode=mode,
                max_t=max(c.train.iterations for _, c in todo)
                if todo
                else base_cfg.train.iterations,
                grace_period=space.scheduler.grace_period,
                reduction_factor=space.scheduler.reduction_factor,
            )
        budget = space.budget
        stopper = None
        if budget.gpu_hours or budget.cpu_hours:
            stopper = _budget_stopper(tracker.ledger.path, space)
        tuner = tune.Tuner(
            tune.with_resources(trainable, TRIAL_ACTOR_RESOURCES),
            tune_config=tune.TuneConfig(
                search_alg=search,
                scheduler=scheduler,
                num_samples=num_trials,
                max_concurrent_trials=concurrency,
                # A trial's actor only waits for its TorchTrainer: the next trial can reuse
                # its process (imports done) instead of starting one. Not when ASHA stops
                # trials: a stopped trial's actor is still inside its TorchTrainer.
                reuse_actors=opts.tuned_ray and space.scheduler.kind == "none",
            ),
            run_config=tune.RunConfig(
                name=f"tune-{int(time.time())}",
                storage_path=storage,
                callbacks=[callback],
                stop=stopper,
                verbose=1 if opts.verbose else 0,
                log_to_file=True,
            ),
        )
        printer(
            f"running {num_trials} trial(s), {concurrency} at a time, on "
            f"{'a local' if local else 'the'} Ray cluster ({int(cpus)} CPUs)"
        )
        with progress:
            tuner.fit()
            # Tune returns normally after Ctrl-C (SIGINT) too: trials it never ended mean
            # the sweep was interrupted, whether or not any had started.
            unfinished = _close_unfinished(tracker, space, progress)
        spent = budget_spent(tracker.ledger, space)
        if spent:
            not_run = num_trials - progress.done
            printer(f"{spent}: stopped the sweep, {not_run} trial(s) not run or not finished")
            return "STOPPED"
        return "KILLED" if unfinished or progress.done < num_trials else "FINISHED"
    except KeyboardInterrupt:
        _close_unfinished(tracker, space)
        return "KILLED"
    except Exception:
        _close_unfinished(tracker, space)
        log = sweep_dir / "driver-error.log"
        log.write_text(traceback.format_exc())
        lines = [ln for ln in traceback.format_exc().strip().splitlines() if ln.strip()]
        printer(f"sweep failed: {lines[-1][:300]} (full traceback: {log})")
        return "FAILED"


# What each trial's Tune actor reserves: no CPU, since it only waits for its TorchTrainer
# (a CPU fraction kept two 1-CPU trials from fitting on 2 CPUs: the second one's workers
# waited for the first to end). Ray needs some resource: a token amount of memory.
TRIAL_ACTOR_RESOURCES: dict[str, float] = {"CPU": 0, "memory": 2**20}


def _is_local(opts: SweepOptions) -> bool:
    """Whether the sweep runs on an embedded Ray (no --address, no RAY_ADDRESS)."""
    return not opts.address and not os.environ.get("RAY_ADDRESS")


def _concurrency(space: Space, opts: SweepOptions, cpus: float) -> int:
    """Trials at once: --max-concurrent, else the space's max_concurrent, else as many as
    the cluster's CPUs hold (each trial needs its workers' CPUs)."""
    res = space.resources
    per_trial = max(res.workers * res.cpus_per_worker, 1e-9)
    return opts.max_concurrent or space.max_concurrent or max(1, int(cpus // per_trial))


def _define_by_run(space: Space, trial: Any) -> dict[str, Any]:
    import uuid

    suggest_overrides(space, trial)
    return {"sample": uuid.uuid4().hex[:8]}


def _tpe_history(space: Space, tracker: SweepTracker) -> list[Any]:
    """Finished trials of an earlier run of this sweep, as Optuna trials (resume for TPE)."""
    import optuna

    dists = optuna_distributions(space)
    out = []
    for entry in tracker.ledger.trials.values():
        value = entry.get("metrics", {}).get(space.metric)
        if entry.get("status") != "FINISHED" or value is None:
            continue
        params = {optuna_name(k): v for k, v in entry.get("overrides", {}).items()}
        out.append(
            optuna.trial.create_trial(
                params=params,
                distributions={n: dists[n] for n in params if n in dists},
                value=value,
            )
        )
    return out


def budget_used(ledger: Ledger, space: Space, now: float | None = None) -> dict[str, float]:
    """GPU- and CPU-hours the sweep's trials used so far: the cost recorded for every trial
    that ended (in any invocation of the sweep), plus the running trials' so far."""
    now = time.time() if now is None else now
    used = {"gpu_hours": 0.0, "cpu_hours": 0.0}
    for entry in ledger.trials.values():
        if entry.get("status") == "RUNNING" and "started_at" in entry:
            cost = trial_cost(space, now - float(entry["started_at"]))
        else:
            cost = entry.get("metrics", {})
        for unit in used:
            used[unit] += float(cost.get(unit, 0.0))
    return used


def budget_spent(ledger: Ledger, space: Space, now: float | None = None) -> str:
    """ "budget spent (...)" when a budget of ``space`` is used up, else ""."""
    used = budget_used(ledger, space, now)
    for unit in ("gpu_hours", "cpu_hours"):
        limit = getattr(space.budget, unit)
        if limit and used[unit] >= limit:
            name = unit.replace("_", "-").upper().replace("-HOURS", "-hours")
            return f"budget spent ({used[unit]:.4g} of {limit:g} {name})"
    return ""


def _budget_stopper(ledger_path: Path, space: Space) -> Any:
    """A Tune stopper that ends the sweep once its trials used the space's budget.

    Tune pickles its stopper with the experiment state, so it holds only the ledger's path
    and the space (no client, no printer) and reads the costs the callback wrote there.
    """
    from ray.tune import Stopper

    class BudgetStopper(Stopper):
        def __init__(self) -> None:
            self.checked_at = 0.0
            self.spent = False

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            # Tune asks on every step of its loop; the ledger is read at most once a second.
            if not self.spent and time.time() - self.checked_at >= 1.0:
                self.checked_at = time.time()
                self.spent = bool(budget_spent(Ledger.load(ledger_path), space))
            return self.spent

    return BudgetStopper()


def _make_searcher(base: type, history: list[Any] | None = None, **kwargs: Any) -> Any:
    """OptunaSearch that sees only the reports carrying the objective.

    Training reports arrive every ``log_every`` iterations, evaluations less often; Optuna
    needs the metric in every result it is given, so the others are not forwarded.
    ``history`` (finished Optuna trials) is added to the study before the first suggestion.
    """

    class EvaluationsOnly(base):
        def _setup_study(self, mode: Any) -> None:
            super()._setup_study(mode)
            for trial in history or []:
                self._ot_study.add_trial(trial)

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return EvaluationsOnly(**kwargs)


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
