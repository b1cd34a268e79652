"""Effects against the control: every arm's paired difference from the configuration it is
compared with, seed by seed, with its interval, its tests and a verdict.

Repeat r of every configuration trains with the same seed (initialisation, data order,
augmentation: common random numbers), so differences are taken per seed, then summarised:

- the mean paired difference ``d̄`` (arm − control) and its 95% Student-t interval
  ``d̄ ± t(0.975, n − 1) · s_d / √n``; the paired t-test's two-sided p;
- the exact sign-flip permutation p (n ≤ 12): the share of the 2ⁿ sign assignments of the
  differences whose mean is at least as far from 0 as the observed one;
- Holm's step-down adjustment of the t-test p across the sweep's arms, for the space's
  primary metric only, and a verdict at α = 0.05 on it: ``better`` or ``worse`` (direction-
  aware: lower is better for oLRP and costs) or ``no detectable difference``; none with
  fewer than two pairs;
- the minimum detectable difference at 80% power: the smallest |difference| a two-sided
  paired t-test at α = 0.05 (unadjusted) on n pairs with the observed s_d detects 80% of
  the time (exact, from the noncentral t distribution).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
POWER = 0.80
MAX_EXACT_PERMUTATION = 12  # 2**12 sign flips
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
CSV_COLUMNS = (
    "arm",
    "control",
    "metric",
    "n",
    "control_mean",
    "arm_mean",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_perm",
    "p_holm",
    "verdict",
    "mde80",
)


@dataclass(frozen=True)
class PairedEffect:
    arm: str
    control: str
    metric: str
    n: int  # seeds both configurations finished
    control_mean: float
    arm_mean: float
    diff: float  # mean of arm − control over the pairs
    ci_low: float
    ci_high: float
    p_value: float  # paired t-test, two-sided
    p_perm: float  # exact sign-flip permutation (NaN for n > 12)
    p_holm: float  # Holm-adjusted p_value (NaN except for the primary metric)
    verdict: str  # "" without one
    mde80: float
    sd: float  # standard deviation of the paired differences (n − 1)

    def row(self) -> dict[str, object]:
        """The ``effects.csv`` row: undefined numbers are empty cells."""
        values = {c: getattr(self, c) for c in CSV_COLUMNS}
        return {
            k: "" if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


def paired_t(diffs: Sequence[float]) -> tuple[float, float, float, float]:
    """``(mean, ci_low, ci_high, p)`` of the paired differences: the 95% Student-t interval
    and the two-sided one-sample t-test of mean 0 (NaN with fewer than two). Equal
    differences (no spread): the interval is the point, p is 0 (or 1 if they are 0)."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = statistics.stdev(diffs)
    if sd == 0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n))
    p = 2 * float(stats.t.sf(abs(t), n - 1))
    return mean, mean - half, mean + half, p


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided permutation p of mean 0 by flipping the signs of the differences
    (every one of the 2ⁿ assignments; NaN for none or more than 12)."""
    n = len(diffs)
    if n == 0 or n > MAX_EXACT_PERMUTATION:
        return math.nan
    values = np.asarray(diffs, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
    means = np.abs(signs @ values) / n
    observed = abs(float(values.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment; NaN entries stay NaN and do not count as tests."""
    tested = [i for i in range(len(p_values)) if math.isfinite(p_values[i])]
    order = sorted(tested, key=lambda i: p_values[i])
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test on ``n`` pairs at a true mean difference
    ``effect`` with a paired standard deviation ``sd``."""
    from scipy import stats

    if n < 2 or sd <= 0:
        return math.nan
    crit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    nc = abs(effect) * math.sqrt(n) / sd
    return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


def min_detectable_difference(sd: float, n: int, target: float = POWER) -> float:
    """The |difference| the test detects with probability ``target`` (NaN for n < 2)."""
    from scipy import optimize

    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while power(high, sd, n) < target:
        high *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n) - target, 0.0, high, xtol=1e-12))


def seeds_needed(effect: float, sd: float, target: float = POWER, limit: int = 1000) -> int:
    """Fewest pairs at which a true difference ``effect`` is detected with ``target``
    probability, given the paired standard deviation ``sd`` (``limit`` + 1 if more)."""
    if not math.isfinite(effect) or not math.isfinite(sd):
        return 0
    if effect == 0:  # no true difference is ever detected
        return limit + 1
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        if power(effect, sd, n) >= target:
            return n
    return limit + 1


def paired_effect(
    *,
    arm: str,
    control: str,
    metric: str,
    arm_by_seed: dict[int, float],
    control_by_seed: dict[int, float],
) -> PairedEffect:
    """The effect of one arm on one metric over the seeds both finished (finite values)."""
    seeds = sorted(
        s
        for s in set(arm_by_seed) & set(control_by_seed)
        if math.isfinite(arm_by_seed[s]) and math.isfinite(control_by_seed[s])
    )
    diffs = [arm_by_seed[s] - control_by_seed[s] for s in seeds]
    mean, low, high, p = paired_t(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    return PairedEffect(
        arm=arm,
        control=control,
        metric=metric,
        n=len(seeds),
        control_mean=_mean(control_by_seed[s] for s in seeds),
        arm_mean=_mean(arm_by_seed[s] for s in seeds),
        diff=mean,
        ci_low=low,
        ci_high=high,
        p_value=p,
        p_perm=sign_flip_p(diffs),
        p_holm=math.nan,
        verdict="",
        mde80=min_detectable_difference(sd, len(diffs)),
        sd=sd,
    )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def with_holm(
    effects: list[PairedEffect], primary: str, lower_is_better: bool
) -> list[PairedEffect]:
    """``effects`` with the primary metric's rows Holm-adjusted across arms and judged."""
    import dataclasses

    rows = [i for i, e in enumerate(effects) if e.metric == primary]
    adjusted = holm([effects[i].p_value for i in rows])
    out = list(effects)
    for i, p_holm in zip(rows, adjusted):
        effect = effects[i]
        out[i] = dataclasses.replace(
            effect, p_holm=p_holm, verdict=verdict(effect.diff, p_holm, lower_is_better)
        )
    return out


def verdict(diff: float, p_holm: float, lower_is_better: bool) -> str:
    """``better`` / ``worse`` when Holm's p is below α (by the sign of the difference and
    the metric's direction), else ``no detectable difference``; "" without a test."""
    if not math.isfinite(p_holm):
        return ""
    if p_holm >= ALPHA or diff == 0:
        return NO_DIFFERENCE
    return BETTER if (diff < 0) == lower_is_better else WORSE


# ------------------------------------------------------------------- arms and controls
@dataclass(frozen=True)
class Arm:
    """A configuration compared with its control: labels and the trials behind each."""

    label: str
    control_label: str
    trials: tuple[str, ...]  # trial keys of the arm (its MLflow child runs)
    by_seed: dict[int, dict[str, float]]  # repeat -> final metrics
    control_by_seed: dict[int, dict[str, float]]


def compare(
    arms: list[Arm], metrics: Sequence[str], primary: str, lower_is_better: set[str]
) -> list[PairedEffect]:
    """Every arm's effect on every metric, the primary one Holm-adjusted and judged."""
    effects = [
        paired_effect(
            arm=arm.label,
            control=arm.control_label,
            metric=metric,
            arm_by_seed={s: m.get(metric, math.nan) for s, m in arm.by_seed.items()},
            control_by_seed={s: m.get(metric, math.nan) for s, m in arm.control_by_seed.items()},
        )
        for arm in arms
        for metric in metrics
    ]
    return with_holm(effects, primary, primary in lower_is_better)


def ranked(effects: list[PairedEffect], metric: str, lower_is_better: bool) -> list[PairedEffect]:
    """The effects on ``metric``, best first (largest improvement)."""
    mine = [e for e in effects if e.metric == metric]
    sign = -1.0 if lower_is_better else 1.0
    return sorted(mine, key=lambda e: -sign * e.diff if math.isfinite(e.diff) else math.inf)


def describe(effect: PairedEffect, digits: int = 4) -> str:
    """``weight=0.2: AP +0.0123 [-0.0040, +0.0286], p (Holm) 0.213, 3 seeds — verdict``."""
    if effect.n == 0:
        return f"{effect.arm}: {effect.metric}: no seed finished in both it and its control"
    diff = f"{effect.metric} {effect.diff:+.{digits}f}"
    if effect.n < 2:
        return (
            f"{effect.arm}: {diff} (1 seed: no interval and no test; 2 or more seeds per "
            "configuration give them)"
        )
    p = effect.p_holm if math.isfinite(effect.p_holm) else effect.p_value
    label = "p (Holm)" if math.isfinite(effect.p_holm) else "p"
    return (
        f"{effect.arm}: {diff} [{effect.ci_low:+.{digits}f}, {effect.ci_high:+.{digits}f}], "
        f"{label} {p:.3g}, {effect.n} seeds — {effect.verdict or NO_DIFFERENCE}"
    )


def headline(effects: list[PairedEffect], metric: str, lower_is_better: bool) -> list[str]:
    """What a sweep prints at its end: the effects on ``metric``, best first, a line each
    under a heading; nothing when there is no arm."""
    mine = ranked(effects, metric, lower_is_better)
    if not mine:
        return []
    heading = f"effects against the control ({metric}, arm − control, paired seeds):"
    return [heading, *("  " + describe(effect) for effect in mine)]
