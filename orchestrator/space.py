"""Search spaces: a validated YAML study description and the trial plan it expands to.

A space names a base preset, the metric to optimise, a method (grid / random / TPE), the
parameters (dotted config keys), repeats (independent seeds), resources and limits:

    name: lambda
    description: "Thesis Table 5.7"
    base: tiny
    metric: {name: AP, goal: maximize}
    method: grid
    parameters:
      loss.corr.weight: {values: [0.0, 0.1, 0.2]}
      loss.corr.kind: {values: [concordance, spearman], when: {loss.corr.weight: [0.1, 0.2]}}
    control: {loss.corr.weight: 0.0}
    repeats: 3

``control`` names the baseline: every other configuration is compared with the one equal to
it except that the control's keys take the control's values (parameters whose ``when``
stops holding drop out), repeat by repeat; repeat r of every configuration trains with the
same seed (common random numbers). A parameter with ``when`` applies only when the named
parameters take one of the listed values; otherwise it keeps the base config's value and
trials that become identical are planned once. Every problem raises
:class:`~detectors.config.ConfigError` naming the file, the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detectors.config import (
    ConfigError,
    ExperimentConfig,
    SplitFilesConfig,
    apply_overrides,
    did_you_mean,
    from_dict,
    known_keys,
    load_config,
    preset_names,
    read_yaml,
)
from detectors.metrics import METRIC_NAMES, PER_CATEGORY_PREFIX

Method = Literal["grid", "random", "tpe"]
_TOP_KEYS = {
    "name",
    "description",
    "base",
    "metric",
    "method",
    "parameters",
    "repeats",
    "max_trials",
    "max_concurrent",
    "resources",
    "scheduler",
    "budget",
    "fixed",
    "control",
}
SEED_KEY = "train.seed"  # varied by ``repeats``, never by a parameter
_PARAM_KEYS = {"values", "distribution", "min", "max", "when"}
_DISTRIBUTIONS = ("uniform", "loguniform", "int_uniform")


@dataclass(frozen=True)
class Parameter:
    key: str  # dotted config key
    values: tuple[Any, ...] = ()  # categorical choices (grid needs these)
    distribution: str = ""  # or a distribution for random / TPE
    low: float = 0.0
    high: float = 0.0
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # applies only under these values

    def applies(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(key) in allowed for key, allowed in self.when)


@dataclass(frozen=True)
class Resources:
    workers: int = 1  # Ray Train workers (DDP ranks) per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional values share a GPU between trials


@dataclass(frozen=True)
class Scheduler:
    """ASHA stops trials whose objective, at an evaluation (``train.eval_every``), falls in
    the worst ``1 - 1/reduction_factor`` of the trials that reached that iteration."""

    kind: Literal["none", "asha"] = "none"
    grace_period: int = 1  # iterations before ASHA may stop a trial (its first rung)
    reduction_factor: int = 3


@dataclass(frozen=True)
class Budget:
    """Resource-hours after which the sweep stops (0 = no limit). A trial costs its wall time
    × workers × GPUs (or CPUs) per worker, counted while it runs: when either budget is
    spent, running trials are stopped (KILLED, resumable) and no new trial starts."""

    gpu_hours: float = 0.0
    cpu_hours: float = 0.0  # for CPU-only sweeps, whose GPU-hours stay 0


@dataclass(frozen=True)
class Space:
    name: str
    path: str
    base: str
    metric: str = "AP"
    goal: Literal["maximize", "minimize"] = "maximize"
    method: Method = "grid"
    description: str = ""
    parameters: tuple[Parameter, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides for every trial
    repeats: int = 1
    max_trials: int = 0  # random/TPE: trials to sample; grid: cap (0 = no cap)
    max_concurrent: int = 0  # 0 = as many as resources allow
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    budget: Budget = field(default_factory=Budget)
    control: dict[str, Any] = field(default_factory=dict)  # the baseline's parameter values

    def definition(self) -> dict[str, Any]:
        """What defines the study's trials, as plain values: a resumed sweep must have the
        same (``repeats`` may grow: more seeds; the control only shapes the report)."""
        return json.loads(
            json.dumps(
                {
                    "base": self.base,
                    "method": self.method,
                    "metric": self.metric,
                    "parameters": {
                        p.key: {k: v for k, v in dataclasses.asdict(p).items() if k != "key"}
                        for p in self.parameters
                    },
                    "fixed": self.fixed,
                    "max_trials": self.max_trials,
                },
                sort_keys=True,
                default=str,
            )
        )

    def digest(self) -> str:
        """A short hash of :meth:`definition` (tags runs; a resume checks it)."""
        payload = json.dumps(self.definition(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlannedTrial:
    key: str  # stable identity: the same overrides and repeat give the same key
    overrides: dict[str, Any]  # dotted key -> value, including train.seed for repeats
    repeat: int


def _fail(path: str, key: str, problem: str) -> ConfigError:
    return ConfigError(path, key, problem)


def _expect(value: Any, types: type | tuple[type, ...], path: str, key: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(path, key, f"expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise _fail(path, key, f"expected {what}, got {value!r}")
    return value


def _check_value(key: str, value: Any, path: str, where: str) -> None:
    """Raise unless ``key=value`` makes a valid config (type and range checks)."""
    try:
        from_dict(apply_overrides({}, {key: value}, path), path)
    except ConfigError as exc:
        raise _fail(path, where, exc.problem) from None


def _parameter(key: str, spec: Any, path: str) -> Parameter:
    where = f"parameters.{key}"
    if key not in known_keys():
        hint = did_you_mean(key, known_keys())
        raise _fail(path, where, f"not a config key{hint} (see `corrtune train --help`)")
    if key == SEED_KEY:
        raise _fail(path, where, "seeds come from `repeats` (repeat r trains with seed + r)")
    if not isinstance(spec, dict):
        spec = {"values": spec if isinstance(spec, list) else [spec]}
    for sub in spec:
        if sub not in _PARAM_KEYS:
            raise _fail(
                path, f"{where}.{sub}", f"unknown key; expected one of {sorted(_PARAM_KEYS)}"
            )
    when: list[tuple[str, tuple[Any, ...]]] = []
    for other, allowed in _expect(
        spec.get("when", {}), dict, path, f"{where}.when", "a mapping"
    ).items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        when.append((other, tuple(allowed)))
    if "values" in spec:
        values = _expect(spec["values"], list, path, f"{where}.values", "a list")
        if not values:
            raise _fail(path, f"{where}.values", "must not be empty")
        for i, value in enumerate(values):
            _check_value(key, value, path, f"{where}.values[{i}]")
        return Parameter(key, values=tuple(values), when=tuple(when))
    dist = spec.get("distribution")
    if dist not in _DISTRIBUTIONS:
        raise _fail(
            path,
            f"{where}.distribution",
            f"must be one of {list(_DISTRIBUTIONS)} (or give `values`), got {dist!r}",
        )
    low = _expect(spec.get("min"), (int, float), path, f"{where}.min", "a number")
    high = _expect(spec.get("max"), (int, float), path, f"{where}.max", "a number")
    if not low < high:
        raise _fail(path, f"{where}.max", f"must be greater than min ({low})")
    if dist == "loguniform" and low <= 0:
        raise _fail(path, f"{where}.min", "must be positive for a loguniform distribution")
    _check_value(key, int(low) if dist == "int_uniform" else float(low), path, f"{where}.min")
    return Parameter(key, distribution=dist, low=float(low), high=float(high), when=tuple(when))


def load_space(
    path: str | Path, *, preset: str | None = None, repeats: int | None = None
) -> Space:
    """Read and validate a search-space YAML; ``preset`` replaces its ``base`` and
    ``repeats`` its ``repeats`` (the command line's ``--preset``, ``--repeats``)."""
    override_repeats = repeats
    source = str(path)
    raw = read_yaml(path)
    for key in raw:
        if key not in _TOP_KEYS:
            raise _fail(source, str(key), f"unknown key{did_you_mean(str(key), _TOP_KEYS)}")
    for required in ("name", "base", "parameters"):
        if required not in raw:
            raise _fail(source, required, "missing (required)")
    name = _expect(raw["name"], str, source, "name", "a string")
    if not name or any(c in name for c in "/\\ "):
        raise _fail(source, "name", "must be a non-empty word without slashes or spaces")
    base = preset or _expect(raw["base"], str, source, "base", "a preset name")
    if base not in preset_names():
        raise _fail(
            source if not preset else "--preset",
            "base",
            f"unknown preset {base!r}; choose from {preset_names()}",
        )
    metric = _expect(raw.get("metric", {}), dict, source, "metric", "a mapping")
    for key in metric:
        if key not in ("name", "goal"):
            raise _fail(source, f"metric.{key}", "unknown key; expected name, goal")
    metric_name = _metric_name(metric.get("name", "AP"), source)
    goal = metric.get("goal", "maximize")
    if goal not in ("maximize", "minimize"):
        raise _fail(source, "metric.goal", f"must be maximize or minimize, got {goal!r}")
    method = raw.get("method", "grid")
    if method not in ("grid", "random", "tpe"):
        raise _fail(source, "method", f"must be grid, random or tpe, got {method!r}")
    params_raw = _expect(raw["parameters"], dict, source, "parameters", "a mapping")
    parameters = tuple(_parameter(str(k), v, source) for k, v in params_raw.items())
    names = {p.key for p in parameters}
    for p in parameters:
        for other, _ in p.when:
            if other not in names:
                raise _fail(
                    source,
                    f"parameters.{p.key}.when.{other}",
                    "must name another parameter of this space",
                )
        if method == "grid" and not p.values:
            raise _fail(source, f"parameters.{p.key}", "grid search needs `values`")
    fixed = _expect(raw.get("fixed", {}), dict, source, "fixed", "a mapping")
    for key, value in fixed.items():
        if key not in known_keys():
            hint = did_you_mean(key, known_keys())
            raise _fail(source, f"fixed.{key}", f"not a config key{hint}")
        _check_value(key, value, source, f"fixed.{key}")
    repeats = _expect(raw.get("repeats", 1), int, source, "repeats", "an integer")
    if override_repeats is not None:
        if override_repeats < 1:
            raise _fail("--repeats", "repeats", f"must be at least 1, got {override_repeats}")
        repeats = override_repeats
    max_trials = _expect(raw.get("max_trials", 0), int, source, "max_trials", "an integer")
    max_conc = _expect(raw.get("max_concurrent", 0), int, source, "max_concurrent", "an integer")
    if repeats < 1:
        raise _fail(source, "repeats", "must be at least 1")
    if max_trials < 0 or max_conc < 0:
        raise _fail(
            source, "max_trials" if max_trials < 0 else "max_concurrent", "must not be negative"
        )
    if method != "grid" and max_trials == 0:
        raise _fail(source, "max_trials", f"{method} search needs max_trials > 0")
    if method == "tpe" and repeats != 1:
        raise _fail(
            source, "repeats", "TPE needs repeats: 1 (it picks each trial from one result)"
        )
    res_raw = _expect(raw.get("resources", {}), dict, source, "resources", "a mapping")
    res_fields: dict[str, type | tuple[type, ...]] = {
        "workers": int,
        "cpus_per_worker": (int, float),
        "gpus_per_worker": (int, float),
    }
    for key, value in res_raw.items():
        if key not in res_fields:
            raise _fail(source, f"resources.{key}", f"unknown key; expected {list(res_fields)}")
        _expect(value, res_fields[key], source, f"resources.{key}", "a number")
        if value < 0 or (key == "workers" and value < 1):
            raise _fail(source, f"resources.{key}", "must be positive")
    resources = Resources(**res_raw)
    scheduler = _scheduler(raw.get("scheduler", {"kind": "none"}), source)
    budget = _budget(raw.get("budget", {}), source, resources)
    control = _control(raw.get("control", {}), parameters, source)
    space = Space(
        name=name,
        path=source,
        base=base,
        metric=metric_name,
        goal=goal,
        method=method,
        description=str(raw.get("description", "")),
        parameters=parameters,
        fixed=dict(fixed),
        repeats=repeats,
        max_trials=max_trials,
        max_concurrent=max_conc,
        resources=resources,
        scheduler=scheduler,
        budget=budget,
        control=control,
    )
    if control and method != "tpe":
        planned = [t.overrides for t in static_plan(space)]
        if not any(control_of(space, o) == o for o in planned):
            raise _fail(source, "control", "matches no planned configuration")
    return space


def _metric_name(name: Any, source: str) -> str:
    """A measure the evaluation reports (``detectors.metrics.METRIC_NAMES``, or the AP of
    one class as ``AP/<class name>``): a sweep towards anything else would never see it."""
    if isinstance(name, str) and (name in METRIC_NAMES or name.startswith(PER_CATEGORY_PREFIX)):
        return name
    hint = did_you_mean(str(name), METRIC_NAMES)
    raise _fail(
        source,
        "metric.name",
        f"{name!r} is not a metric the evaluation produces{hint}; choose from "
        f"{', '.join(METRIC_NAMES)}, or {PER_CATEGORY_PREFIX}<class name>",
    )


def _scheduler(raw: Any, source: str) -> Scheduler:
    raw = _expect(raw, dict, source, "scheduler", "a mapping like {kind: asha}")
    for key in raw:
        if key not in ("kind", "grace_period", "reduction_factor"):
            raise _fail(
                source,
                f"scheduler.{key}",
                "unknown key; expected kind, grace_period, reduction_factor",
            )
    kind = raw.get("kind", "none")
    if kind not in ("none", "asha"):
        raise _fail(source, "scheduler.kind", f"must be none or asha, got {kind!r}")
    grace = _expect(
        raw.get("grace_period", 1), int, source, "scheduler.grace_period", "an integer"
    )
    factor = _expect(
        raw.get("reduction_factor", 3), int, source, "scheduler.reduction_factor", "an integer"
    )
    if grace < 1:
        raise _fail(source, "scheduler.grace_period", "must be at least 1")
    if factor < 2:
        raise _fail(source, "scheduler.reduction_factor", "must be at least 2")
    return Scheduler(kind=kind, grace_period=grace, reduction_factor=factor)


def _budget(raw: Any, source: str, resources: Resources) -> Budget:
    if not raw:
        return Budget()
    raw = _expect(raw, dict, source, "budget", "a mapping like {gpu_hours: 4}")
    hours: dict[str, float] = {}
    for key, value in raw.items():
        if key not in ("gpu_hours", "cpu_hours"):
            raise _fail(source, f"budget.{key}", "unknown key; expected gpu_hours, cpu_hours")
        _expect(value, (int, float), source, f"budget.{key}", "a number of hours")
        if value <= 0:
            raise _fail(source, f"budget.{key}", "must be positive")
        hours[key] = float(value)
    if "gpu_hours" in hours and resources.gpus_per_worker == 0:
        raise _fail(
            source,
            "budget.gpu_hours",
            "the trials request no GPU (resources.gpus_per_worker is 0), so no GPU-hours "
            "are ever spent; use budget.cpu_hours",
        )
    return Budget(**hours)


def trial_key(overrides: dict[str, Any], repeat: int) -> str:
    payload = json.dumps({"o": overrides, "r": repeat}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def grid_plan(space: Space) -> list[PlannedTrial]:
    """Every distinct configuration of a grid space times its repeats, in a stable order."""
    keys = [p.key for p in space.parameters]
    seen: set[str] = set()
    combos: list[dict[str, Any]] = []
    for values in itertools.product(*(p.values for p in space.parameters)):
        active = active_overrides(space, dict(zip(keys, values)))
        marker = json.dumps(active, sort_keys=True, default=str)
        if marker not in seen:
            seen.add(marker)
            combos.append(active)
    plan = _with_repeats(space, combos)
    if space.max_trials:
        plan = plan[: space.max_trials]
    return plan


def _with_repeats(space: Space, combos: list[dict[str, Any]]) -> list[PlannedTrial]:
    """Each configuration ``repeats`` times. A trial's key depends on its configuration and
    repeat index only, so raising ``repeats`` later adds trials and keeps the others."""
    plan: list[PlannedTrial] = []
    for active in combos:
        for repeat in range(space.repeats):
            plan.append(PlannedTrial(trial_key(active, repeat), dict(active), repeat))
    return plan


def static_plan(space: Space) -> list[PlannedTrial]:
    """The trials known before the sweep starts: all of them for grid and random search,
    none for TPE (Optuna picks each from the results so far)."""
    if space.method == "grid":
        return grid_plan(space)
    if space.method == "random":
        return random_plan(space)
    return []


def trial_config(
    space: Space,
    overrides: dict[str, Any],
    extra: dict[str, Any] | None = None,
    repeat: int = 0,
) -> ExperimentConfig:
    """The full config of one trial: base preset ← space's fixed ← trial ← command line,
    and the seed of repeat ``repeat``: the resolved ``train.seed`` + ``repeat``, the same
    for that repeat of every configuration (initialisation, data order, augmentation).

    A relative ``data.root`` (the ``bccd`` preset's, or a ``--set``) is made absolute here,
    in the driver: Ray workers run in other folders, and on other machines (so are split
    files given without a root). ``fit.*`` settings at ``auto`` are fitted here too, so the
    trial's logged config holds the fitted numbers (read once per dataset: this runs often).
    """
    cfg = load_config(preset=space.base, overrides={**space.fixed, **overrides, **(extra or {})})
    data = dataclasses.replace(cfg.data, root=absolute_roots(cfg.data.root))
    if not data.root:  # split files relative to the working folder
        data = dataclasses.replace(
            data, train=_absolute_files(data.train), val=_absolute_files(data.val)
        )
    cfg = dataclasses.replace(
        cfg, data=data, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + repeat)
    )
    if not cfg.fit.pending:
        return cfg
    from detectors.fit import fit_config  # torch and the models: only when there is a fit

    return fit_config(cfg, cache_dir=None)


def _absolute_files(files: SplitFilesConfig) -> SplitFilesConfig:
    return SplitFilesConfig(
        **{k: str(Path(v).expanduser().resolve()) if v else v for k, v in vars(files).items()}
    )


def active_overrides(space: Space, chosen: dict[str, Any]) -> dict[str, Any]:
    """The values of ``chosen`` that apply: a parameter whose ``when`` does not hold (given
    the values that apply) drops out. Ordered as the space's parameters."""
    active: dict[str, Any] = {}
    for p in _ordered(space):
        if p.key in chosen and p.applies(active):
            active[p.key] = chosen[p.key]
    return {p.key: active[p.key] for p in space.parameters if p.key in active}


def control_of(space: Space, overrides: dict[str, Any]) -> dict[str, Any]:
    """The configuration a configuration is compared with: ``overrides`` with the control's
    keys set to the control's values, then only what applies."""
    return active_overrides(space, {**overrides, **space.control})


def _control(raw: Any, parameters: tuple[Parameter, ...], source: str) -> dict[str, Any]:
    raw = _expect(raw, dict, source, "control", "a mapping of parameters to their values")
    by_key = {p.key: p for p in parameters}
    for key, value in raw.items():
        where = f"control.{key}"
        if key not in by_key:
            hint = did_you_mean(str(key), by_key)
            raise _fail(source, where, f"not a parameter of this space{hint}")
        p = by_key[key]
        if p.values and value not in p.values:
            raise _fail(source, where, f"{value!r} is not one of its values {list(p.values)}")
        if not p.values and not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and p.low <= value <= p.high
        ):
            raise _fail(source, where, f"{value!r} is outside [{p.low:g}, {p.high:g}]")
    return dict(raw)


def short_name(key: str, keys: Iterable[str]) -> str:
    """``loss.corr.weight`` -> ``weight``; ``assign.kind`` -> ``assign.kind`` when another of
    ``keys`` also ends in ``kind`` (so a label never shows two ``kind=``)."""
    leaf = key.rsplit(".", 1)[-1]
    if sum(k.rsplit(".", 1)[-1] == leaf for k in keys) > 1:
        return ".".join(key.split(".")[-2:])
    return leaf


def absolute_roots(root: str) -> str:
    """Dataset ``root`` with every ``+``-joined part absolute ("" stays "").

    Follows the VOC loader's reading of ``"VOCdevkit/VOC2007+VOC2012"``: a later relative
    part that does not exist from here sits next to the first part.
    """
    if not root or Path(root).expanduser().exists():
        return str(Path(root).expanduser().resolve()) if root else root
    parts: list[Path] = []
    for index, part in enumerate(root.split("+")):
        path = Path(part).expanduser()
        if index > 0 and not path.exists() and not path.is_absolute():
            path = parts[0].parent / path
        parts.append(path.resolve())
    return "+".join(str(p) for p in parts)


# ------------------------------------------------------------------ random and TPE
def _ordered(space: Space) -> list[Parameter]:
    """Parameters ordered so that every ``when`` condition is decided before it is read."""
    done: list[Parameter] = []
    pending = list(space.parameters)
    while pending:
        ready = [p for p in pending if all(k in {d.key for d in done} for k, _ in p.when)]
        if not ready:  # a cycle: load_space cannot tell; keep the file order
            ready = pending[:1]
        done += ready
        pending = [p for p in pending if p not in ready]
    return done


def _sample(param: Parameter, rng: random.Random) -> Any:
    if param.values:
        return rng.choice(param.values)
    if param.distribution == "int_uniform":
        return rng.randint(int(param.low), int(param.high))
    if param.distribution == "loguniform":
        return math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    return rng.uniform(param.low, param.high)


def random_plan(space: Space) -> list[PlannedTrial]:
    """``max_trials`` configurations drawn at random (seeded by the space), times repeats.

    Drawn in the driver rather than by Optuna at run time, so the plan is known in advance
    (``--dry-run`` shows it) and a resumed sweep draws exactly the same trials. Identical
    draws (possible when every parameter is categorical) are kept once.
    """
    rng = random.Random(space.digest())
    combos: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(combos) < space.max_trials and attempts < 100 * space.max_trials:
        attempts += 1
        chosen: dict[str, Any] = {}
        for param in _ordered(space):
            if param.applies(chosen):
                chosen[param.key] = _sample(param, rng)
        marker = json.dumps(chosen, sort_keys=True, default=str)
        if marker not in seen:
            seen.add(marker)
            combos.append(chosen)
    return _with_repeats(space, combos)


def optuna_distributions(space: Space) -> dict[str, Any]:
    """Optuna distributions of the space's parameters, keyed by :func:`optuna_name`."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for p in space.parameters:
        if p.values:
            out[optuna_name(p.key)] = od.CategoricalDistribution(list(p.values))
        elif p.distribution == "int_uniform":
            out[optuna_name(p.key)] = od.IntDistribution(int(p.low), int(p.high))
        else:
            log = p.distribution == "loguniform"
            out[optuna_name(p.key)] = od.FloatDistribution(p.low, p.high, log=log)
    return out


def optuna_name(key: str) -> str:
    """Dots would be read as nesting by Tune's config handling."""
    return key.replace(".", "__")


def suggest_overrides(space: Space, trial: Any) -> dict[str, Any]:
    """Define-by-run: ask ``trial`` (an Optuna trial) for the parameters that apply."""
    dists = optuna_distributions(space)
    chosen: dict[str, Any] = {}
    for p in _ordered(space):
        if not p.applies(chosen):
            continue
        name, dist = optuna_name(p.key), dists[optuna_name(p.key)]
        if p.values:
            chosen[p.key] = trial.suggest_categorical(name, dist.choices)
        elif p.distribution == "int_uniform":
            chosen[p.key] = trial.suggest_int(name, int(p.low), int(p.high))
        else:
            log = p.distribution == "loguniform"
            chosen[p.key] = trial.suggest_float(name, p.low, p.high, log=log)
    return chosen
