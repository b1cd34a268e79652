"""Which parameters matter: Optuna's fANOVA importance of the objective over a sweep's
finished trials (for spaces with two or more parameters and eight or more such trials)."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.results import TrialRow
from orchestrator.space import Space

MIN_TRIALS = 8
NOT_APPLIED = "–"  # the value of a parameter whose `when` did not hold


def parameter_importance(space: Space, rows: list[TrialRow]) -> dict[str, float]:
    """Parameter -> importance (summing to 1), most important first; {} when the sweep has
    fewer than two parameters, fewer than eight finished trials with the objective, or an
    objective that took one value in all of them (no variance to apportion: fANOVA refuses).

    Parameters with listed values are categorical (with a value of their own where they did
    not apply); a distribution parameter that did not apply in some trial is left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    done = [
        r
        for r in rows
        if r.status == "FINISHED" and math.isfinite(r.metrics.get(space.metric, math.nan))
    ]
    if len(space.parameters) < 2 or len(done) < MIN_TRIALS:
        return {}
    if len({r.metrics[space.metric] for r in done}) < 2:
        return {}
    distributions: dict[str, Any] = {}
    for p in space.parameters:
        if p.values:
            choices = [*(str(v) for v in p.values), NOT_APPLIED]
            distributions[p.key] = CategoricalDistribution(list(dict.fromkeys(choices)))
        elif all(p.key in r.overrides for r in done):
            if p.distribution == "int_uniform":
                distributions[p.key] = IntDistribution(int(p.low), int(p.high))
            else:
                log = p.distribution == "loguniform"
                distributions[p.key] = FloatDistribution(p.low, p.high, log=log)
    if len(distributions) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=space.goal)
    for r in done:
        params = {
            key: (
                str(r.overrides.get(key, NOT_APPLIED))
                if isinstance(d, CategoricalDistribution)
                else r.overrides[key]
            )
            for key, d in distributions.items()
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=r.metrics[space.metric]
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in found.items()}
