"""Report tables, confidence intervals, Parquet and plots, on a hand-made ledger."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.ledger import Ledger
from orchestrator.report import mean_ci, report_sweep, write_report
from orchestrator.space import grid_plan, load_space

SPACE = """
name: rep
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
  loss.corr.kind: {values: [pearson, spearman], when: {loss.corr.weight: [0.2]}}
repeats: 3
"""
# AP per configuration, one value per seed (hand-worked CIs below).
AP = {
    (0.0, None): [0.30, 0.32, 0.34],
    (0.2, "pearson"): [0.33, 0.33, 0.33],
    (0.2, "spearman"): [0.35, 0.36, 0.40],
}


def test_mean_ci_hand_worked() -> None:
    # mean 0.32; s = 0.02; t(0.975, 2) = 4.3027; half = 4.3027 · 0.02 / √3 = 0.04968
    mean, half, n = mean_ci([0.30, 0.32, 0.34])
    assert n == 3
    assert mean == pytest.approx(0.32)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert half == pytest.approx(0.0497, abs=5e-5)


def test_mean_ci_edge_cases() -> None:
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([])[2] == 0
    assert mean_ci([0.3, float("nan"), 0.3]) == (0.3, 0.0, 2)  # NaN dropped, zero spread
    # two values: t(0.975, 1) = 12.706; s = 0.1/√2; half = 12.706 · 0.1/√2 / √2 = 0.6353
    assert mean_ci([0.1, 0.2])[1] == pytest.approx(0.63531, abs=1e-4)


@pytest.fixture
def swept(tmp_path: Path) -> tuple[Path, Path]:
    return _sweep_of(tmp_path, AP)


def _sweep_of(
    tmp_path: Path, aps: dict[tuple[float, str | None], list[float]], space_text: str = SPACE
) -> tuple[Path, Path]:
    space_path = tmp_path / "rep.yaml"
    space_path.write_text(space_text)
    space = load_space(space_path)
    ledger = Ledger(tmp_path / ".corrtune/sweeps/rep/ledger.json", parent_run_id="parent1")
    for trial in grid_plan(space):
        ap = aps[(trial.overrides["loss.corr.weight"], trial.overrides.get("loss.corr.kind"))]
        value = ap[trial.repeat]
        ledger.trials[trial.key] = {
            "run_id": f"run-{trial.key}",
            "status": "FINISHED",
            "overrides": trial.overrides,
            "metrics": {
                "AP": value,
                "beta_cls": value / 2,
                "oLRP": 1 - value,
                "trial_wall_s": 50.0,
                "gpu_hours": 0.0,
            },
        }
    ledger.sweep_wall_s = 123.0
    ledger.save()
    return space_path, tmp_path


def test_paper_table_mean_ci_and_best(swept: tuple[Path, Path]) -> None:
    space_path, workdir = swept
    summary = report_sweep(space_path, preset=None, workdir=workdir).read_text()
    assert "9/9 trials finished" in summary
    baseline = next(ln for ln in summary.splitlines() if ln.startswith("| 0.0 | – | 3 |"))
    assert "0.3200 ± 0.0497" in baseline
    pearson = next(ln for ln in summary.splitlines() if ln.startswith("| 0.2 | pearson | 3 |"))
    assert "0.3300 ± 0.0000" in pearson
    spearman = next(ln for ln in summary.splitlines() if ln.startswith("| 0.2 | spearman | 3 |"))
    # mean 0.37, s = 0.026458, half = 4.302653 · 0.026458 / √3 = 0.0657
    assert "**0.3700 ± 0.0657**" in spearman  # best AP (maximize)
    assert "**0.6300 ± 0.0657**" in spearman  # best oLRP (lower is better)
    assert "**" not in baseline.split("|")[4]
    # The pivot: λ down, coefficient across.
    assert "| loss.corr.weight \\ loss.corr.kind | – | pearson | spearman |" in summary
    assert "Sweep wall time (all invocations): 123 s" in summary


def test_a_sweep_whose_metric_never_moved_still_gets_its_report(tmp_path: Path) -> None:
    # A smoke sweep: AP 0 in every trial. The effects are written; no arm "needs 2 seeds".
    controlled = SPACE + "control: {loss.corr.weight: 0.0}\n"
    space_path, workdir = _sweep_of(tmp_path, {k: [0.0, 0.0, 0.0] for k in AP}, controlled)
    summary = report_sweep(space_path, preset=None, workdir=workdir).read_text()
    assert "## Effects against the control" in summary
    assert "| +0.0000 | [+0.0000, +0.0000] |" in summary
    assert "needs" not in summary
    # The other fixture's arms differ from the control: there the line is written.
    (tmp_path / "moved").mkdir()
    space_path, workdir = _sweep_of(tmp_path / "moved", AP, controlled)
    assert "needs" in report_sweep(space_path, preset=None, workdir=workdir).read_text()


def test_parquet_and_plots(swept: tuple[Path, Path]) -> None:
    import pyarrow.parquet as pq

    space_path, workdir = swept
    report_sweep(space_path, preset=None, workdir=workdir)
    out = workdir / "results" / "rep"
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(rows) == 9
    assert sorted(r["final/AP"] for r in rows) == sorted(v for vs in AP.values() for v in vs)
    assert {r["run_id"] for r in rows} == {f"run-{r['trial_key']}" for r in rows}
    for name in ("AP_vs_weight.png", "beta_cls_vs_AP.png", "AP_bars.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_unfinished_trials_are_listed_not_averaged(swept: tuple[Path, Path]) -> None:
    space_path, workdir = swept
    ledger = Ledger.load(workdir / ".corrtune/sweeps/rep/ledger.json")
    killed = next(iter(ledger.trials))
    ledger.trials[killed]["status"] = "KILLED"
    space = load_space(space_path)
    text = write_report(space, ledger, workdir / "results").summary.read_text()
    assert "8/9 trials finished" in text
    assert "| KILLED |" in text
    assert "| 2 |" in text  # one configuration now averages two repeats
