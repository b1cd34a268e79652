"""What trials cost (resource-hours) and whether a sweep's budget is spent.

A trial costs its wall time × workers × GPUs (or CPUs) per worker, counted while it runs,
over every invocation of the sweep (the ledger keeps the cost of every trial that ended).
"""

from __future__ import annotations

import time

from orchestrator.ledger import Ledger
from orchestrator.space import Space


def trial_cost(space: Space, wall_s: float) -> dict[str, float]:
    """What a trial of ``wall_s`` seconds cost: its resources times its wall time."""
    res = space.resources
    return {
        "trial_wall_s": wall_s,
        "gpu_hours": wall_s * res.workers * res.gpus_per_worker / 3600,
        "cpu_hours": wall_s * res.workers * res.cpus_per_worker / 3600,
    }


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
