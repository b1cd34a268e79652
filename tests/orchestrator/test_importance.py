"""fANOVA parameter importance over a sweep's finished trials."""

from __future__ import annotations

from pathlib import Path

from orchestrator.importance import parameter_importance
from orchestrator.results import TrialRow
from orchestrator.space import grid_plan, load_space

SPACE = """
name: imp
base: smoke
parameters:
  loss.corr.weight: {values: [0.0, 0.1, 0.2, 0.3]}
  nms.kind: {values: [greedy, soft]}
  loss.corr.kind: {values: [pearson, spearman], when: {loss.corr.weight: [0.1, 0.2, 0.3]}}
"""


def _rows(tmp_path: Path, ap: object, status: str = "FINISHED") -> tuple:
    path = tmp_path / "imp.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    rows = [
        TrialRow(t.key, t.overrides, 0, status, "", {"AP": ap(t.overrides)})  # type: ignore[operator]
        for t in grid_plan(space)
    ]
    return space, rows


def test_the_parameter_that_moves_the_metric_is_the_important_one(tmp_path: Path) -> None:
    space, rows = _rows(tmp_path, lambda o: 0.3 + o["loss.corr.weight"])
    importance = parameter_importance(space, rows)
    assert next(iter(importance)) == "loss.corr.weight"
    assert importance["loss.corr.weight"] > 0.8
    total = sum(importance.values())
    assert abs(total - 1.0) < 1e-6
    # A conditional parameter counts where it did not apply as a value of its own.
    assert "loss.corr.kind" in importance


def test_too_few_trials_or_parameters_give_nothing(tmp_path: Path) -> None:
    space, rows = _rows(tmp_path, lambda o: 0.5)
    assert parameter_importance(space, rows[:7]) == {}
    assert parameter_importance(space, [r for r in rows if r.status != "FINISHED"]) == {}


def test_an_objective_that_never_moved_has_no_importance(tmp_path: Path) -> None:
    # A smoke sweep: every trial's AP is 0. fANOVA raises on zero variance; the report
    # (and the effects in it) must still be written.
    space, rows = _rows(tmp_path, lambda o: 0.0)
    assert len(rows) >= 8
    assert parameter_importance(space, rows) == {}
    space, rows = _rows(tmp_path, lambda o: 0.1 * (o["nms.kind"] == "soft"))
    assert next(iter(parameter_importance(space, rows))) == "nms.kind"
