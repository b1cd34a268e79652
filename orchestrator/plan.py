"""A sweep's plan: the trials it will run, each with its resolved config, and how that
plan is described (``--dry-run``, and the head of every sweep's output)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detectors.config import ConfigError, ExperimentConfig
from detectors.models import setting_problems
from orchestrator.ledger import Ledger, ledger_path
from orchestrator.space import (
    SEED_KEY,
    PlannedTrial,
    Space,
    active_overrides,
    load_space,
    static_plan,
    trial_config,
)

Plan = list[tuple[PlannedTrial, ExperimentConfig]]


def plan_sweep(space: Space, overrides: dict[str, Any], *, check: bool = True) -> Plan:
    """The trials a sweep will run, each with its fully resolved config (validates all).

    Grid and random search are planned in full here; TPE chooses its trials at run time,
    so its plan is empty and only the base config is validated (and its parameters probed,
    each at its values or bounds). ``check``: refuse a trial whose config sets something its
    detector does not read (a parameter that varies such a setting would give identical
    trials), before anything runs; a report of a sweep that already ran passes False.
    """
    base = trial_config(space, {}, overrides)
    plan = [
        (t, trial_config(space, t.overrides, overrides, repeat=t.repeat))
        for t in static_plan(space)
    ]
    if check:
        for trial, cfg in plan or _probes(space, overrides, base):
            check_trial_settings(space, trial.overrides, overrides, cfg)
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


def _probes(space: Space, overrides: dict[str, Any], base: ExperimentConfig) -> Plan:
    """For a space planned at run time (TPE): the base, and each parameter at each of its
    values (a distribution: its bounds) where it applies (its `when` at their first
    values), so that a parameter no trial would read is refused before anything runs."""
    probes: Plan = [(PlannedTrial("base", {}, 0), base)]
    for p in space.parameters:
        values = p.values or (
            (int(p.low), int(p.high)) if p.distribution == "int_uniform" else (p.low, p.high)
        )
        for value in values:
            chosen = {key: allowed[0] for key, allowed in p.when} | {p.key: value}
            trial = active_overrides(space, chosen)
            probes.append((PlannedTrial("probe", trial, 0), trial_config(space, trial, overrides)))
    return probes


def check_trial_settings(
    space: Space, trial: dict[str, Any], overrides: dict[str, Any], cfg: ExperimentConfig
) -> None:
    """Raise on the first setting of ``cfg`` (the trial ``trial`` of ``space``, with the
    command line's ``overrides``) that nothing chosen reads, naming where it was set: a
    parameter or ``fixed`` of the space, ``--set``, or the base preset."""
    problems = setting_problems(cfg)
    if not problems:
        return
    key, problem = problems[0]
    if key in overrides:
        source, where = "--set", key
    elif key in trial:
        source, where = space.path, f"parameters.{key}"
    elif key in space.fixed:
        source, where = space.path, f"fixed.{key}"
    else:
        source, where = f"preset {space.base}", key
    shown = ", ".join(f"{k}={short_value(v)}" for k, v in trial.items() if k != SEED_KEY)
    raise ConfigError(source, where, f"{problem} (in the trial {shown})" if shown else problem)


def trials_at_once(space: Space, max_concurrent: int, cpus: float) -> int:
    """Trials at once: ``--max-concurrent``, else the space's max_concurrent, else as many
    as ``cpus`` hold (each trial needs its workers' CPUs)."""
    res = space.resources
    per_trial = max(res.workers * res.cpus_per_worker, 1e-9)
    return max_concurrent or space.max_concurrent or max(1, int(cpus // per_trial))


def short_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def describe_plan(space: Space, plan: Plan, finished: set[str]) -> str:
    keys = [p.key for p in space.parameters]
    lines = [
        f"sweep {space.name!r}: {space.description}".rstrip(": "),
        f"base preset {space.base}, method {space.method}, metric {space.metric} "
        f"({space.goal}), {len(plan) or space.max_trials} trials, {space.repeats} repeat(s)",
    ]
    if space.control:
        shown = ", ".join(f"{k}={short_value(v)}" for k, v in space.control.items())
        lines.append(f"control: {shown} (every other configuration is compared with it)")
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
        row += [short_value(trial.overrides.get(k, "-")) for k in keys]
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


def plan_and_estimate(
    space_path: str | Path,
    *,
    preset: str | None,
    overrides: dict[str, Any],
    workdir: Path,
    local: bool,
    max_concurrent: int = 0,
    repeats: int | None = None,
    measure: bool = True,
) -> str:
    """``--dry-run``: the trial plan and its cost estimate; starts nothing, writes nothing."""
    from orchestrator.estimate import sweep_estimate

    space = load_space(space_path, preset=preset, repeats=repeats)
    plan = plan_sweep(space, overrides)
    cache_dir = workdir.resolve() / ".corrtune"
    ledger = Ledger.load(ledger_path(workdir.resolve(), space.name))
    # An embedded Ray gets this machine's CPUs; a cluster's are unknown until the sweep
    # joins it, so there one trial at a time unless the space or --max-concurrent says.
    cpus = float(os.cpu_count() or 1) if local else 0.0
    estimate = sweep_estimate(
        space,
        plan,
        trial_config(space, {}, overrides),
        ledger,
        cache_dir=cache_dir,
        concurrency=trials_at_once(space, max_concurrent, cpus),
        measure=measure,
    )
    return describe_plan(space, plan, ledger.finished()) + "\n" + estimate.describe()
