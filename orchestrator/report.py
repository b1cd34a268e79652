"""Sweep reports under ``results/<space name>/``, rebuilt from the sweep's ledger.

- ``summary.md``: the paper-style table (one row per configuration, mean ± 95% confidence
  interval over repeats, best value per column in bold), a pivot of the objective when the
  space varies two parameters (rows × columns, as in the papers' tables), cost (wall time,
  GPU-hours per trial and per sweep) and every trial.
- ``trials.parquet``: one row per trial (parameters, status, run id, every final metric).
- PNG plots: the objective against λ_corr (or the space's first numeric parameter) with CI
  bands, β_cls against AP, and bars per configuration with CI whiskers.

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import ConfigError, ExperimentConfig
from orchestrator.ledger import Ledger, ledger_path
from orchestrator.plan import plan_sweep
from orchestrator.space import PlannedTrial, Space, load_space, short_name

# Final metrics shown in the tables, and whether lower is better for each.
TABLE_METRICS = ("AP", "AP50", "AP75", "beta_img", "beta_cls", "oLRP")
COST_METRICS = ("train_time_s", "trial_wall_s", "gpu_hours")
LOWER_IS_BETTER = {"oLRP", "oLRP_Loc", "oLRP_FP", "oLRP_FN", *COST_METRICS}
SEED_KEY = "train.seed"


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
    overrides: dict[str, Any]  # parameter values of this trial (and train.seed)
    repeat: int
    status: str  # FINISHED / STOPPED (early, by ASHA) / FAILED / KILLED / RUNNING / NOT RUN
    run_id: str
    metrics: dict[str, float]

    @property
    def config_label(self) -> str:
        shown = {k: v for k, v in self.overrides.items() if k != SEED_KEY}
        keys = list(shown)
        return ", ".join(f"{short_name(k, keys)}={_value(v)}" for k, v in shown.items()) or "base"


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
        repeat = trial.repeat if trial else int(overrides.get(SEED_KEY, 0))
        rows.append(
            TrialRow(
                key=key,
                overrides=overrides,
                repeat=repeat,
                status=str(entry.get("status", "NOT RUN")),
                run_id=str(entry.get("run_id", "")),
                metrics={k: float(v) for k, v in entry.get("metrics", {}).items()},
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


# ------------------------------------------------------------------------- markdown
def _value(value: Any) -> str:
    """0.0 stays "0.0" (as written in the space); long sampled floats get 4 digits."""
    if isinstance(value, float) and len(str(value)) > 8:
        return f"{value:.4g}"
    return str(value)


def _cell(mean: float, half: float, n: int, bold: bool = False) -> str:
    if n == 0 or not math.isfinite(mean):
        return "–"
    digits = 1 if abs(mean) >= 100 else 4
    text = f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")
    return f"**{text}**" if bold else text


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def paper_table(space: Space, table: list[ConfigStats], metrics: list[str]) -> list[str]:
    """One row per configuration; mean ± 95% CI over repeats; best per column in bold."""
    best = {m: best_index(table, m) for m in metrics if m not in COST_METRICS}
    header = [p.key for p in space.parameters] + ["n", *metrics]
    body = []
    for i, config in enumerate(table):
        n = max((config.stats[m][2] for m in metrics), default=0)
        cells = [_cell(*config.stats[m], bold=best.get(m) == i) for m in metrics]
        body.append([_value(config.values[p.key]) for p in space.parameters] + [str(n), *cells])
    return _markdown(header, body)


def pivot_table(space: Space, table: list[ConfigStats], metric: str) -> list[str]:
    """The objective with the first parameter as rows and the second as columns (the layout
    of thesis Table 5.7: λ_corr down, coefficient across); best per column in bold."""
    if len(space.parameters) != 2:
        return []
    row_key, col_key = space.parameters[0].key, space.parameters[1].key
    rows = list(dict.fromkeys(_value(c.values[row_key]) for c in table))
    cols = list(dict.fromkeys(_value(c.values[col_key]) for c in table))
    cell = {(_value(c.values[row_key]), _value(c.values[col_key])): c.stats[metric] for c in table}
    pick = min if metric in LOWER_IS_BETTER else max
    best: dict[str, str] = {}
    for col in cols:
        found = [(cell[(r, col)][0], r) for r in rows if (r, col) in cell]
        found = [(m, r) for m, r in found if math.isfinite(m)]
        if len(found) >= 2:
            best[col] = pick(found)[1]
    body = [
        [r] + [_cell(*cell[(r, c)], bold=best.get(c) == r) if (r, c) in cell else "" for c in cols]
        for r in rows
    ]
    return [
        f"{metric}: {row_key} (rows) × {col_key} (columns)",
        "",
        *_markdown([f"{row_key} \\ {col_key}", *cols], body),
    ]


def trials_table(space: Space, rows: list[TrialRow]) -> list[str]:
    keys = [p.key for p in space.parameters]
    metrics = [*TABLE_METRICS, *COST_METRICS]
    header = ["trial", *keys, *(["seed"] if space.repeats > 1 else []), "status", *metrics]
    body = []
    for row in rows:
        cells = [row.key, *(_value(row.overrides.get(k, "–")) for k in keys)]
        if space.repeats > 1:
            cells.append(_value(row.overrides.get(SEED_KEY, row.repeat)))
        cells.append(row.status)
        cells += [_cell(row.metrics.get(m, float("nan")), float("nan"), 1) for m in metrics]
        body.append(cells)
    return _markdown(header, body)


# ------------------------------------------------------------------------- files
def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    _atomic(path, write)


def write_parquet(space: Space, rows: list[TrialRow], path: Path) -> None:
    """All trials, one row each: key, status, run id, repeat, parameters, final metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    metric_names = sorted({m for r in rows for m in r.metrics})
    columns: dict[str, list[Any]] = {
        "sweep": [space.name] * len(rows),
        "trial_key": [r.key for r in rows],
        "status": [r.status for r in rows],
        "run_id": [r.run_id for r in rows],
        "repeat": [r.repeat for r in rows],
        "config": [r.config_label for r in rows],
    }
    for p in space.parameters:
        # Mixed types (a parameter that did not apply) are stored as text.
        values = [r.overrides.get(p.key) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        columns[p.key] = values if len(kinds) <= 1 else [_value(v) for v in values]
    for m in metric_names:
        columns[f"final/{m}"] = [r.metrics.get(m) for r in rows]
    table = pa.table(columns)
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def _numeric_axis(space: Space) -> str | None:
    """λ_corr if the space varies it, else the first parameter with ≥ 3 numeric values."""
    for p in space.parameters:
        if p.key == "loss.corr.weight":
            return p.key
    for p in space.parameters:
        numeric = [v for v in p.values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(set(numeric)) >= 3 or (p.distribution and p.distribution != "int_uniform"):
            return p.key
    return None


def write_plots(
    space: Space, rows: list[TrialRow], table: list[ConfigStats], out: Path
) -> list[Path]:
    """The PNG figures this space supports; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = space.metric
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        _atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        plt.close(fig)
        written.append(path)

    axis = _numeric_axis(space)
    if axis is not None and table:
        others = [p.key for p in space.parameters if p.key != axis]
        lines: dict[str, list[tuple[float, float, float]]] = {}
        shared: list[tuple[float, float, float]] = []  # configs where the others did not apply
        for config in table:
            x = config.values[axis]
            if not isinstance(x, int | float):
                continue
            mean, half, _ = config.stats[metric]
            label = ", ".join(
                f"{short_name(k, others)}={_value(config.values[k])}" for k in others
            )
            if others and all(config.values[k] == "–" for k in others):
                shared.append((float(x), mean, half))
            else:
                lines.setdefault(label or metric, []).append((float(x), mean, half))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, points in (lines or {metric: []}).items():
            points = sorted(points + shared)
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            halves = [p[2] if math.isfinite(p[2]) else 0.0 for p in points]
            ax.plot(xs, ys, marker="o", label=label)
            low = [y - h for y, h in zip(ys, halves)]
            high = [y + h for y, h in zip(ys, halves)]
            ax.fill_between(xs, low, high, alpha=0.2)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"{metric} (mean ± 95% CI)")
        ax.set_title(space.name)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        save(fig, f"{metric}_vs_{axis.rsplit('.', 1)[-1]}.png")

    done = [r for r in rows if r.status == "FINISHED"]
    pairs = [
        (r.metrics["beta_cls"], r.metrics["AP"], r.config_label)
        for r in done
        if "beta_cls" in r.metrics and "AP" in r.metrics
    ]
    if pairs:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label in dict.fromkeys(c for _, _, c in pairs):
            pts = [(b, a) for b, a, c in pairs if c == label]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, s=18)
        ax.set_xlabel("β_cls (Spearman IoU–score over true positives)")
        ax.set_ylabel("AP")
        ax.set_title(f"{space.name}: β_cls vs AP")
        if len(pairs) <= 30:
            ax.legend(fontsize=6)
        save(fig, "beta_cls_vs_AP.png")

    if table:
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(table) + 2), 3.5))
        labels = [", ".join(_value(v) for v in c.values.values()) or "base" for c in table]
        means = [c.stats[metric][0] for c in table]
        errs = [c.stats[metric][1] if math.isfinite(c.stats[metric][1]) else 0.0 for c in table]
        ax.bar(range(len(table)), means, yerr=errs, capsize=3)
        ax.set_xticks(range(len(table)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"{metric} (mean ± 95% CI)")
        ax.set_title(f"{space.name}: {' × '.join(p.key for p in space.parameters)}", fontsize=8)
        save(fig, f"{metric}_bars.png")
    return written


# Where a trial's wall time goes (TrackingCallback's timings), in order.
PHASES = {
    "launch_s": "start-up (trial actor, Ray Train controller, workers)",
    "setup_s": "data and model",
    "train_time_s": "training loop",
    "eval_time_s": "of which evaluations",
    "teardown_s": "tear-down",
    "trial_wall_s": "trial wall time",
}


def time_breakdown(done: list[TrialRow]) -> list[str]:
    """One line: the median of each phase of the finished trials' wall time."""
    parts = []
    for key, what in PHASES.items():
        values = [r.metrics[key] for r in done if math.isfinite(r.metrics.get(key, math.nan))]
        if values:
            parts.append(f"{what} {statistics.median(values):.1f} s")
    return [f"- Per finished trial (medians): {'; '.join(parts)}"] if parts else []


def write_report(
    space: Space,
    ledger: Ledger,
    results_dir: Path,
    *,
    plan: list[tuple[PlannedTrial, ExperimentConfig]] | None = None,
) -> Path:
    """Write ``results/<name>/`` (summary.md, trials.parquet, plots); return summary.md."""
    out = results_dir / space.name
    rows = trial_rows(space, ledger, plan)
    metrics = list(dict.fromkeys([space.metric, *TABLE_METRICS]))
    table = config_table(space, rows, [*metrics, *COST_METRICS])
    done = [r for r in rows if r.status == "FINISHED"]
    stopped = sum(r.status == "STOPPED" for r in rows)
    write_parquet(space, rows, out / "trials.parquet")
    plots = write_plots(space, rows, table, out)
    trial_wall = sum(r.metrics.get("trial_wall_s", 0.0) for r in rows)
    gpu_hours = sum(r.metrics.get("gpu_hours", 0.0) for r in rows)
    body = [
        f"# {space.name}",
        "",
        space.description,
        "",
        f"Base preset `{space.base}`, method `{space.method}`, metric `{space.metric}` "
        f"({space.goal}); {len(done)}/{len(rows)} trials finished"
        + (
            f", {stopped} stopped early by ASHA (not in the table: their metrics are "
            "from fewer iterations)"
            if stopped
            else ""
        )
        + f"; {space.repeats} repeat(s) per configuration.",
        "",
        "Mean ± half-width of the 95% Student-t confidence interval over repeats "
        "(no ± with one repeat); best per column in **bold**.",
        "",
        *paper_table(space, table, [*metrics, *COST_METRICS]),
        "",
    ]
    pivot = pivot_table(space, table, space.metric)
    if pivot:
        body += [*pivot, ""]
    body += [
        "## Cost",
        "",
        f"- Sweep wall time (all invocations): {ledger.sweep_wall_s:.0f} s",
        f"- Sum of trial wall times: {trial_wall:.0f} s "
        f"(mean {trial_wall / max(len(done), 1):.0f} s per finished trial)",
        f"- GPU-hours: {gpu_hours:.3f}; CPU-hours: "
        f"{sum(r.metrics.get('cpu_hours', 0.0) for r in rows):.3f}",
        *time_breakdown(done),
        "",
        "## Trials",
        "",
        *trials_table(space, rows),
        "",
        f"MLflow parent run: `{ledger.parent_run_id}`. All trials: `trials.parquet`.",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    path = out / "summary.md"
    write_text_atomic(path, "\n".join(body))
    return path


def report_sweep(space_or_name: str | Path, *, preset: str | None, workdir: Path) -> Path:
    """``corrtune report``: rebuild ``results/<name>/`` for a sweep that ran in ``workdir``.

    ``space_or_name`` is the space's YAML, or the name of a space in ``search_spaces/``.
    The preset, ``--set`` values and seeds per configuration are the sweep's own (its
    ledger's) unless ``preset`` says otherwise.
    """
    path = Path(space_or_name)
    if not path.exists() and not path.suffix:
        shipped = Path(__file__).resolve().parents[1] / "search_spaces" / f"{path}.yaml"
        path = shipped if shipped.exists() else path
    if not path.exists():
        raise ConfigError(str(space_or_name), "", "no such search-space file or shipped space")
    name = load_space(path).name
    found = ledger_path(workdir, name)
    if not found.exists():
        raise ConfigError(str(path), "name", f"no sweep named {name!r} ran in {workdir}")
    ledger = Ledger.load(found)
    recorded = ledger.invocation
    space = load_space(
        path, preset=preset or recorded.get("preset"), repeats=ledger.repeats or None
    )
    plan = plan_sweep(space, dict(recorded.get("overrides") or {}))
    return write_report(space, ledger, workdir / "results", plan=plan)
