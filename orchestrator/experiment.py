"""The Tune experiment of one sweep invocation: searcher, scheduler, stopper, ``Tuner``.

Grid and random plans are enqueued in plan order through Optuna's grid sampler over the
index of each trial to run, so trials run in the order ``--dry-run`` shows; TPE samples
define-by-run (``when`` conditions included) and starts from the finished trials of earlier
invocations (a resumed TPE search keeps its history).
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import ExperimentConfig
from orchestrator import ray_compat
from orchestrator.callbacks import BudgetStopper, EvaluationsOnly
from orchestrator.ledger import Ledger
from orchestrator.space import (
    PlannedTrial,
    Space,
    optuna_distributions,
    optuna_name,
    suggest_overrides,
)

# What each trial's Tune actor reserves: no CPU, since it only waits for its TorchTrainer
# (a CPU fraction kept two 1-CPU trials from fitting on 2 CPUs: the second one's workers
# waited for the first to end); a token amount of memory; and a sliver of the head node's
# resource, which keeps the actor, and the Ray Train controller that Ray puts beside it, on
# the head: a worker node that is lost then takes only the trial's workers with it, which
# Ray Train restarts from the last checkpoint (on another node, or that one back).
TRIAL_ACTOR_RESOURCES: dict[str, float] = {
    "CPU": 0,
    "memory": 2**20,
    ray_compat.HEAD_NODE_RESOURCE: 0.001,
}
TPE_STUDY = "corrtune-tpe"


@dataclass(frozen=True)
class Objective:
    metric: str  # the reported key, ``val/<metric>``
    mode: str  # "max" or "min"

    @classmethod
    def of(cls, space: Space) -> Objective:
        return cls(f"val/{space.metric}", "max" if space.goal == "maximize" else "min")


def _define_by_run(space: Space, trial: Any) -> dict[str, Any]:
    suggest_overrides(space, trial)
    return {"sample": uuid.uuid4().hex[:8]}


def tpe_history(space: Space, ledger: Ledger) -> list[Any]:
    """Finished trials of earlier invocations of this sweep, as Optuna trials."""
    import optuna

    dists = optuna_distributions(space)
    out = []
    for entry in ledger.trials.values():
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


def build_searcher(
    space: Space, todo: list[tuple[PlannedTrial, ExperimentConfig]], ledger: Ledger
) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = Objective.of(space)
    if space.method == "tpe":
        # The study is made here, in a storage passed to the searcher, which loads it (by
        # name) with the earlier invocations' trials already in it.
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(
            storage=storage,
            study_name=TPE_STUDY,
            direction="maximize" if objective.mode == "max" else "minimize",
        )
        for trial in tpe_history(space, ledger):
            study.add_trial(trial)
        return EvaluationsOnly(
            space=functools.partial(_define_by_run, space),  # picklable, unlike a lambda
            metric=objective.metric,
            mode=objective.mode,
            sampler=optuna.samplers.TPESampler(seed=0),
            storage=storage,
            study_name=TPE_STUDY,
        )
    indices = list(range(len(todo)))
    return EvaluationsOnly(
        space={"plan_index": optuna.distributions.CategoricalDistribution(indices)},
        metric=objective.metric,
        mode=objective.mode,
        sampler=optuna.samplers.GridSampler({"plan_index": indices}, seed=0),
        points_to_evaluate=[{"plan_index": i} for i in indices],
    )


def build_scheduler(
    space: Space, todo: list[tuple[PlannedTrial, ExperimentConfig]], base: ExperimentConfig
) -> Any:
    if space.scheduler.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    objective = Objective.of(space)
    return ASHAScheduler(
        time_attr="iteration",
        metric=objective.metric,
        mode=objective.mode,
        max_t=max((c.train.iterations for _, c in todo), default=base.train.iterations),
        grace_period=space.scheduler.grace_period,
        reduction_factor=space.scheduler.reduction_factor,
    )


def build_tuner(
    *,
    space: Space,
    trainable: Any,
    searcher: Any,
    scheduler: Any,
    num_trials: int,
    concurrency: int,
    storage: str,
    callbacks: list[Any],
    stoppers: list[Any],
    ledger_path: Path,
    reuse_actors: bool,
    verbose: bool,
) -> Any:
    import os

    from ray import tune

    os.environ.setdefault(ray_compat.NEW_OUTPUT, "0")
    os.environ.setdefault(ray_compat.AUTO_LOGGERS_OFF, "1")
    # Intermediate reports carry training metrics only; val/* arrives with evaluations.
    os.environ[ray_compat.STRICT_METRIC_CHECKING_OFF] = "1"
    budget = space.budget
    if budget.gpu_hours or budget.cpu_hours:
        stoppers = [BudgetStopper(ledger_path, space), *stoppers]
    stopper = (
        tune.stopper.CombinedStopper(*stoppers)
        if len(stoppers) > 1
        else next(iter(stoppers), None)
    )
    return tune.Tuner(
        tune.with_resources(trainable, TRIAL_ACTOR_RESOURCES),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_trials,
            max_concurrent_trials=concurrency,
            # A trial's actor only waits for its TorchTrainer: the next trial can reuse its
            # process (imports done) instead of starting one. Not when ASHA stops trials: a
            # stopped trial's actor is still inside its TorchTrainer.
            reuse_actors=reuse_actors and space.scheduler.kind == "none",
        ),
        run_config=tune.RunConfig(
            name=f"tune-{int(time.time())}",
            storage_path=storage,
            # Ours print nothing of Ray's own (no "Trial ... completed" lines in a pipe).
            callbacks=[*callbacks, *([] if verbose else [ray_compat.quiet_progress_callback()])],
            stop=stopper,
            verbose=1 if verbose else 0,
            log_to_file=True,
        ),
    )
