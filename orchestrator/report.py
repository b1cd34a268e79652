"""Sweep reports under ``results/<space name>/``, rebuilt from the sweep's ledger.

- ``summary.md``: the effects against the control (paired differences with their 95%
  intervals, tests and verdicts: :mod:`orchestrator.effects`), the seed noise beside the
  evaluation-set noise, the paper-style table (one row per configuration, mean ± 95%
  confidence interval over seeds, best value per column in bold), a pivot of the objective
  when the space varies two parameters (rows × columns, as in the papers' tables), the
  parameters' importance (fANOVA), cost (wall time, GPU-hours per trial and per sweep) and
  every trial.
- ``effects.csv``: one row per arm and metric (the columns of ``effects.CSV_COLUMNS``).
- ``trials.parquet``: one row per trial (parameters, status, run id, every final metric).
- PNG plots: a forest plot of the effects on the objective, the objective against λ_corr
  (or the space's first numeric parameter) with CI bands, β_cls against AP, and bars per
  configuration with CI whiskers.

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import ConfigError, ExperimentConfig
from orchestrator import effects as fx
from orchestrator.importance import parameter_importance
from orchestrator.ledger import Ledger, ledger_path
from orchestrator.plan import plan_sweep
from orchestrator.results import (
    BOOTSTRAPPED,
    COST_METRICS,
    LOWER_IS_BETTER,
    TABLE_METRICS,
    ConfigStats,
    SeedNoise,
    TrialRow,
    arms,
    config_table,
    seed_noise,
    trial_rows,
)
from orchestrator.results import best_index as best_index
from orchestrator.results import mean_ci as mean_ci
from orchestrator.results import value_text as _value
from orchestrator.space import PlannedTrial, Space, load_space, short_name


# ------------------------------------------------------------------------- markdown
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
            cells.append("–" if row.seed is None else str(row.seed))
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
    space: Space,
    rows: list[TrialRow],
    table: list[ConfigStats],
    out: Path,
    effects: list[fx.PairedEffect] | None = None,
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

    primary = fx.ranked(effects or [], space.metric, space.metric in LOWER_IS_BETTER)
    if primary:
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(primary) + 1.4))
        colours = {fx.BETTER: "tab:green", fx.WORSE: "tab:red"}
        for y, e in enumerate(reversed(primary)):
            colour = colours.get(e.verdict, "tab:gray")
            if math.isfinite(e.ci_low):
                ax.plot([e.ci_low, e.ci_high], [y, y], color=colour, lw=2)
            ax.plot([e.diff], [y], "o", color=colour)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(primary)), [e.arm for e in reversed(primary)], fontsize=7)
        ax.set_xlabel(f"{space.metric}: arm − control (mean of paired seeds, 95% CI)")
        ax.set_title(f"{space.name}: effects against the control", fontsize=9)
        save(fig, f"{space.metric}_effects.png")

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


@dataclass(frozen=True)
class Report:
    """What a report wrote, and the effects it found (the sweep prints and logs those)."""

    summary: Path
    effects_csv: Path | None
    effects: list[fx.PairedEffect]
    arms: list[fx.Arm]


def compute_effects(
    space: Space, rows: list[TrialRow]
) -> tuple[list[fx.Arm], list[fx.PairedEffect]]:
    """Every arm against its control on every table metric (none without a control)."""
    found = arms(space, rows)
    metrics = list(dict.fromkeys([space.metric, *TABLE_METRICS, *COST_METRICS]))
    return found, fx.compare(found, metrics, space.metric, LOWER_IS_BETTER)


def write_effects_csv(effects: list[fx.PairedEffect], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fx.CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for effect in effects:
        writer.writerow(effect.row())
    write_text_atomic(path, buffer.getvalue())


def _num(value: float, digits: int = 4, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval(e: fx.PairedEffect) -> str:
    if not math.isfinite(e.ci_low):
        return "–"
    return f"[{_num(e.ci_low, sign=True)}, {_num(e.ci_high, sign=True)}]"


def effects_section(
    space: Space, found: list[fx.Arm], effects: list[fx.PairedEffect], noise: list[SeedNoise]
) -> list[str]:
    """The "Effects against the control" section of summary.md."""
    lines = ["## Effects against the control", ""]
    if not space.control:
        return [*lines, "The space declares no `control`: nothing to compare against.", ""]
    shown = ", ".join(f"{k}={_value(v)}" for k, v in space.control.items())
    lines += [
        f"Control: {shown}. Each configuration is compared with the one equal to it but for "
        "the control's values, seed by seed (repeat r of every configuration trains with the "
        "same seed: initialisation, data order, augmentation). Difference = arm − control; "
        "95% Student-t interval of the paired difference; p: paired t-test; p_perm: exact "
        "sign-flip permutation test; p (Holm): adjusted across the arms for "
        f"`{space.metric}`, and the verdict at α = 0.05 on it; MDE80: the smallest difference "
        "a paired t-test at α = 0.05 on these seeds detects 80% of the time, at the observed "
        "spread of the differences.",
        "",
    ]
    if not found:
        return [*lines, "No arm has finished trials yet.", ""]
    primary = fx.ranked(effects, space.metric, space.metric in LOWER_IS_BETTER)
    most = max((e.n for e in primary), default=0)
    if most < 2:
        lines += [
            "**One seed per configuration: no interval, no test and no verdict can be given** "
            "(the seed-to-seed spread is unknown). Two seeds are the least that give one; "
            "three or more make a difference of the size seeds themselves cause detectable "
            "(`corrtune sweep ... --repeats 3 --resume` runs only the new seeds).",
            "",
        ]
    header = ["arm", "n", "control", "arm", "difference", "95% CI", "p", "p_perm", "p (Holm)"]
    body = []
    for e in primary:
        body.append(
            [
                e.arm,
                str(e.n),
                _num(e.control_mean),
                _num(e.arm_mean),
                _num(e.diff, sign=True),
                _interval(e),
                _num(e.p_value, 3),
                _num(e.p_perm, 3),
                _num(e.p_holm, 3),
                e.verdict or "–",
                _num(e.mde80),
            ]
        )
    lines += [f"`{space.metric}` ({space.goal}), best first:", ""]
    lines += _markdown([*header, "verdict", "MDE80"], body)
    lines.append("")
    needs = []
    for e in primary:
        # An arm equal to the control on every seed (a smoke sweep) has nothing to detect.
        identical = e.diff == 0 and e.sd == 0
        if e.n >= 2 and math.isfinite(e.sd) and e.verdict == fx.NO_DIFFERENCE and not identical:
            seeds = fx.seeds_needed(e.diff, e.sd)
            more = f"{seeds}" if seeds <= 1000 else "more than 1000"
            needs.append(f"- {e.arm}: a true difference of {e.diff:+.4f} needs {more} seeds")
    if needs:
        lines += [
            "Seeds a difference of the observed size would need to be detected (80% power, "
            "at the observed spread):",
            "",
            *needs,
            "",
        ]
    others = [m for m in dict.fromkeys([*TABLE_METRICS, *COST_METRICS]) if m != space.metric]
    body = []
    for metric in others:
        for e in fx.ranked(effects, metric, metric in LOWER_IS_BETTER):
            body.append(
                [
                    metric,
                    e.arm,
                    str(e.n),
                    _num(e.diff, sign=True),
                    _interval(e),
                    _num(e.p_value, 3),
                ]
            )
    if body:
        lines += [
            "The other metrics (lower is better for oLRP and costs; unadjusted p, no "
            "verdicts: the study's question is its primary metric):",
            "",
            *_markdown(["metric", "arm", "n", "difference", "95% CI", "p"], body),
            "",
        ]
    lines += noise_section(noise)
    lines.append("All rows: `effects.csv`.")
    lines.append("")
    return lines


def noise_section(noise: list[SeedNoise]) -> list[str]:
    if not noise:
        return [
            "Seed noise: the control needs two or more finished seeds to measure it.",
            "",
        ]
    body = [
        [
            n.control,
            n.metric,
            str(n.n),
            _num(n.seed_sd),
            _num(n.eval_sd),
            n.dominant or "–",
        ]
        for n in noise
    ]
    return [
        "### Seed noise and evaluation-set noise",
        "",
        "Seed SD: standard deviation over the control's seeds. Evaluation-set SD: how much "
        "the same run's metric would move on another draw of the validation images "
        "(bootstrap over images of each run's final detections; median over the control's "
        f"runs; measured for {', '.join(BOOTSTRAPPED)}).",
        "",
        *_markdown(["control", "metric", "seeds", "seed SD", "eval-set SD", "larger"], body),
        "",
    ]


def importance_section(space: Space, rows: list[TrialRow]) -> tuple[list[str], dict[str, float]]:
    importance = parameter_importance(space, rows)
    if not importance:
        return [], {}
    body = [[key, f"{value:.3f}"] for key, value in importance.items()]
    return [
        "## Parameter importance",
        "",
        f"fANOVA importance of `{space.metric}` over the finished trials (Optuna's "
        "FanovaImportanceEvaluator; parameters that did not apply count as their own value).",
        "",
        *_markdown(["parameter", "importance"], body),
        "",
    ], importance


def write_report(
    space: Space,
    ledger: Ledger,
    results_dir: Path,
    *,
    plan: list[tuple[PlannedTrial, ExperimentConfig]] | None = None,
) -> Report:
    """Write ``results/<name>/`` (summary.md, effects.csv, trials.parquet, plots)."""
    out = results_dir / space.name
    rows = trial_rows(space, ledger, plan)
    metrics = list(dict.fromkeys([space.metric, *TABLE_METRICS]))
    table = config_table(space, rows, [*metrics, *COST_METRICS])
    done = [r for r in rows if r.status == "FINISHED"]
    stopped = sum(r.status == "STOPPED" for r in rows)
    found, effects = compute_effects(space, rows)
    noise = seed_noise(space, rows, metrics)
    effects_csv = None
    if space.control:
        effects_csv = out / "effects.csv"
        write_effects_csv(effects, effects_csv)
    write_parquet(space, rows, out / "trials.parquet")
    plots = write_plots(space, rows, table, out, effects)
    importance_lines, importance = importance_section(space, rows)
    if importance:
        write_text_atomic(
            out / "importance.csv",
            "parameter,importance\n" + "".join(f"{k},{v}\n" for k, v in importance.items()),
        )
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
        + f"; {space.repeats} seed(s) per configuration.",
        "",
        *effects_section(space, found, effects, noise),
        "## Configurations",
        "",
        "Mean ± half-width of the 95% Student-t confidence interval over seeds "
        "(no ± with one seed); best per column in **bold**.",
        "",
        *paper_table(space, table, [*metrics, *COST_METRICS]),
        "",
    ]
    pivot = pivot_table(space, table, space.metric)
    if pivot:
        body += [*pivot, ""]
    body += importance_lines
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
    return Report(path, effects_csv, effects, found)


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
    # The trials ran: a settings rule added since must not keep their report from being made.
    plan = plan_sweep(space, dict(recorded.get("overrides") or {}), check=False)
    return write_report(space, ledger, workdir / "results", plan=plan).summary


def write_report_or_warn(
    space: Space,
    ledger: Ledger,
    results_dir: Path,
    *,
    plan: list[tuple[PlannedTrial, ExperimentConfig]] | None,
    retry: str,
    printer: Callable[[str], None],
) -> Report | None:
    """The end-of-sweep report. The runs are safe in MLflow and the ledger by then, so a
    report that cannot be written is a one-line warning naming ``retry`` (the command that
    writes it again), never a failed sweep."""
    try:
        report = write_report(space, ledger, results_dir, plan=plan)
    except Exception as exc:  # a full disk, a file where a folder goes, a plotting bug...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        printer(
            f"warning: the report in {results_dir / space.name} was not written ({reason}); "
            f"the runs are saved: retry with: {retry}"
        )
        return None
    printer(f"report: {report.summary.parent}")
    return report
