"""A sweep's results as rows: every trial, every configuration with its mean ± 95% CI over
seeds, and every arm beside the control it is compared with (paired by seed).

Built from the ledger (and the plan, for trials that never ran); what the report writes and
what the end of a sweep prints both read these.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from detectors.config import ExperimentConfig
from orchestrator.effects import Arm
from orchestrator.ledger import Ledger
from orchestrator.space import PlannedTrial, Space, control_of, short_name

# Final metrics shown in the tables, and whether lower is better for each.
TABLE_METRICS = ("AP", "AP50", "AP75", "beta_img", "beta_cls", "oLRP")
COST_METRICS = ("train_time_s", "trial_wall_s", "gpu_hours")
LOWER_IS_BETTER = {"oLRP", "oLRP_Loc", "oLRP_FP", "oLRP_FN", *COST_METRICS}
# Metrics whose evaluation-set noise each final evaluation measures (``<metric>_boot_sd``).
BOOTSTRAPPED = ("AP", "AP50", "AP75")


# ------------------------------------------------------------------------- statistics
def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and the half-width of its Student-t confidence interval over repeats.

    ``half = t((1 + confidence) / 2, n − 1) · s / √n`` with ``s`` the sample standard
    deviation (n − 1). NaN values are dropped; the half-width is NaN for fewer than two.
    Returns ``(mean, half_width, n)``.
    """
    from scipy import stats

    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = statistics.fmean(finite)
    if n < 2:
        return mean, float("nan"), 1
    s = statistics.stdev(finite)
    t = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    return mean, t * s / math.sqrt(n), n


# ------------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class TrialRow:
    key: str
    overrides: dict[str, Any]  # the values of the parameters that apply to this trial
    repeat: int  # repeat r trains with seed (the resolved train.seed) + r
    status: str  # FINISHED / STOPPED (early, by ASHA) / FAILED / KILLED / RUNNING / NOT RUN
    run_id: str
    metrics: dict[str, float]
    seed: int | None = None  # the seed it trained with (None: it never started)

    @property
    def config_label(self) -> str:
        return config_label(self.overrides)


def trial_rows(
    space: Space, ledger: Ledger, plan: list[tuple[PlannedTrial, ExperimentConfig]] | None = None
) -> list[TrialRow]:
    """Every planned trial (in plan order) and every trial the ledger knows (TPE)."""
    planned = {t.key: t for t, _ in plan or []}
    keys = list(planned) + [k for k in ledger.trials if k not in planned]
    rows = []
    for key in keys:
        entry = ledger.trials.get(key, {})
        trial = planned.get(key)
        overrides = dict(entry.get("overrides") or (trial.overrides if trial else {}))
        repeat = trial.repeat if trial else int(entry.get("repeat", 0))
        rows.append(
            TrialRow(
                key=key,
                overrides=overrides,
                repeat=repeat,
                status=str(entry.get("status", "NOT RUN")),
                run_id=str(entry.get("run_id", "")),
                metrics={k: float(v) for k, v in entry.get("metrics", {}).items()},
                seed=entry.get("seed"),
            )
        )
    return rows


@dataclass(frozen=True)
class ConfigStats:
    """One configuration (a row of the paper table): its values and per-metric stats."""

    values: dict[str, Any]  # parameter -> value ("–" where the parameter did not apply)
    stats: dict[str, tuple[float, float, int]]  # metric -> (mean, CI half-width, n)


def config_table(space: Space, rows: list[TrialRow], metrics: Iterable[str]) -> list[ConfigStats]:
    """Finished trials grouped by configuration (all but the seed), in first-seen order."""
    groups: dict[str, list[TrialRow]] = {}
    for row in rows:
        if row.status != "FINISHED":
            continue
        values = {p.key: row.overrides.get(p.key, "–") for p in space.parameters}
        groups.setdefault(json.dumps(values, sort_keys=True, default=str), []).append(row)
    out = []
    for members in groups.values():
        values = {p.key: members[0].overrides.get(p.key, "–") for p in space.parameters}
        stats = {m: mean_ci(r.metrics.get(m, float("nan")) for r in members) for m in metrics}
        out.append(ConfigStats(values, stats))
    return out


def best_index(table: list[ConfigStats], metric: str) -> int | None:
    means = [(c.stats[metric][0], i) for i, c in enumerate(table)]
    means = [(m, i) for m, i in means if math.isfinite(m)]
    if not means:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(means)[1]


def value_text(value: Any) -> str:
    """0.0 stays "0.0" (as written in the space); long sampled floats get 4 digits."""
    if isinstance(value, float) and len(str(value)) > 8:
        return f"{value:.4g}"
    return str(value)


def config_label(overrides: dict[str, Any]) -> str:
    """``weight=0.2, kind=spearman``: a configuration's parameter values, short."""
    keys = list(overrides)
    return (
        ", ".join(f"{short_name(k, keys)}={value_text(v)}" for k, v in overrides.items()) or "base"
    )


def _config_id(overrides: dict[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True, default=str)


def arms(space: Space, rows: list[TrialRow]) -> list[Arm]:
    """Every configuration of finished trials that has a control (``space.control``) and is
    not a control itself, beside that control; in first-seen order."""
    if not space.control:
        return []
    done = [r for r in rows if r.status == "FINISHED"]
    configs: dict[str, list[TrialRow]] = {}
    for row in done:
        configs.setdefault(_config_id(row.overrides), []).append(row)
    out = []
    for members in configs.values():
        overrides = members[0].overrides
        control = control_of(space, overrides)
        if control == overrides:
            continue  # a control itself
        control_rows = configs.get(_config_id(control), [])
        out.append(
            Arm(
                label=config_label(overrides),
                control_label=config_label(control),
                trials=tuple(r.key for r in members),
                by_seed={r.repeat: r.metrics for r in members},
                control_by_seed={r.repeat: r.metrics for r in control_rows},
            )
        )
    return out


@dataclass(frozen=True)
class SeedNoise:
    """How much one metric of a control configuration moves between seeds, and how much it
    would move on another draw of the validation images (the bootstrap of each run)."""

    control: str
    metric: str
    n: int  # seeds
    seed_sd: float  # standard deviation over seeds (n − 1)
    eval_sd: float  # median over its runs of the bootstrap standard deviation (NaN: none)

    @property
    def dominant(self) -> str:
        if not (math.isfinite(self.seed_sd) and math.isfinite(self.eval_sd)):
            return ""
        return "seeds" if self.seed_sd >= self.eval_sd else "evaluation set"


def seed_noise(space: Space, rows: list[TrialRow], metrics: Iterable[str]) -> list[SeedNoise]:
    """Per control configuration with two or more finished seeds, per metric."""
    if not space.control:
        return []
    done = [r for r in rows if r.status == "FINISHED"]
    controls: dict[str, list[TrialRow]] = {}
    for row in done:
        if control_of(space, row.overrides) == row.overrides:
            controls.setdefault(_config_id(row.overrides), []).append(row)
    out = []
    for members in controls.values():
        if len(members) < 2:
            continue
        for metric in metrics:
            values = [
                r.metrics[metric]
                for r in members
                if math.isfinite(r.metrics.get(metric, math.nan))
            ]
            boots = [
                r.metrics[f"{metric}_boot_sd"]
                for r in members
                if math.isfinite(r.metrics.get(f"{metric}_boot_sd", math.nan))
            ]
            out.append(
                SeedNoise(
                    control=config_label(members[0].overrides),
                    metric=metric,
                    n=len(values),
                    seed_sd=statistics.stdev(values) if len(values) > 1 else math.nan,
                    eval_sd=statistics.median(boots) if boots else math.nan,
                )
            )
    return out
