"""Effects against the control: the statistics against independent computations, hand-worked
sign flips and Holm, the pairing of arms with controls in the shipped spaces, and the
report's effects section, CSV and verdicts on a hand-made ledger."""

from __future__ import annotations

import csv
import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from orchestrator import effects as fx
from orchestrator.ledger import Ledger
from orchestrator.report import write_report
from orchestrator.space import control_of, grid_plan, load_space

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------- the statistics
@pytest.mark.parametrize("seed", range(5))
def test_paired_t_matches_scipy_ttest_rel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    control = rng.normal(0.5, 0.02, n)
    arm = control + rng.normal(0.01, 0.01, n)
    mean, low, high, p = fx.paired_t(list(arm - control))
    ref = stats.ttest_rel(arm, control)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert mean == pytest.approx(float(np.mean(arm - control)))


def test_paired_t_edge_cases() -> None:
    assert all(math.isnan(v) for v in fx.paired_t([0.1])[1:])
    assert math.isnan(fx.paired_t([])[0])
    assert fx.paired_t([0.02, 0.02, 0.02]) == (0.02, 0.02, 0.02, 0.0)  # no spread at all
    assert fx.paired_t([0.0, 0.0]) == (0.0, 0.0, 0.0, 1.0)


def _sign_flips_by_hand(diffs: list[Fraction]) -> Fraction:
    """Every sign assignment written out: the share whose |sum| reaches the observed."""
    observed = abs(sum(diffs))
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        if abs(sum(s * d for s, d in zip(signs, diffs))) >= observed:
            hits += 1
    return Fraction(hits, 2 ** len(diffs))


def test_sign_flip_p_hand_worked_n3() -> None:
    # d = (1, 2, 3): sums over the 8 sign patterns are ±6, ±4, ±2, 0, 0: only ±6 reach 6.
    assert fx.sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # d = (1, -2, 4), sum 3: sums 7, -1, 3, -5, 5, -3, 1, -7; six reach |3|.
    assert fx.sign_flip_p([1.0, -2.0, 4.0]) == 0.75
    assert fx.sign_flip_p([1.0, -2.0, 4.0]) == float(
        _sign_flips_by_hand([Fraction(1), Fraction(-2), Fraction(4)])
    )


def test_sign_flip_p_hand_worked_n5() -> None:
    diffs = [Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2), Fraction(-1, 4)]
    # |sum| = 19/4; of the 32 patterns, only those flipping at most the -1/4 (and their
    # negatives) reach it: (+,+,+,+,-) = 19/4 and (+,+,+,+,+) = 21/4, times two signs: 4/32.
    assert _sign_flips_by_hand(diffs) == Fraction(4, 32)
    assert fx.sign_flip_p([float(d) for d in diffs]) == 0.125
    assert math.isnan(fx.sign_flip_p([0.1] * 13))  # past 12: no exact enumeration


def test_holm_hand_worked() -> None:
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4·0.01 = 0.04, 3·0.03 = 0.09, max(0.09, 2·0.04) = 0.09,
    # max(0.09, 0.20) = 0.20; back in the given order:
    assert fx.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert fx.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = fx.holm([0.02, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])  # an untested arm does not count as a test


def test_minimum_detectable_difference_has_80_percent_power() -> None:
    mde = fx.min_detectable_difference(0.01, 3)
    assert fx.power(mde, 0.01, 3) == pytest.approx(0.80, abs=1e-9)
    # Against a simulation of the paired t-test at that difference.
    rng = np.random.default_rng(0)
    diffs = rng.normal(mde, 0.01, size=(40000, 3))
    p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert float(np.mean(p < 0.05)) == pytest.approx(0.80, abs=0.01)
    assert fx.min_detectable_difference(0.01, 10) < mde  # more seeds, smaller effects
    assert math.isnan(fx.min_detectable_difference(0.01, 1))


def test_seeds_needed_is_the_first_n_with_the_power() -> None:
    n = fx.seeds_needed(0.01, 0.01)
    assert fx.power(0.01, 0.01, n) >= 0.8 > fx.power(0.01, 0.01, n - 1)
    # No true difference is detected at any n, even when the pairs never vary.
    assert fx.seeds_needed(0.0, 0.01, limit=50) == fx.seeds_needed(0.0, 0.0, limit=50) == 51
    assert fx.seeds_needed(0.01, 0.0) == 2


@pytest.mark.parametrize(
    ("diff", "p_holm", "lower", "expected"),
    [
        (0.02, 0.01, False, fx.BETTER),
        (-0.02, 0.01, False, fx.WORSE),
        (-0.02, 0.01, True, fx.BETTER),  # oLRP: lower is better
        (0.02, 0.2, False, fx.NO_DIFFERENCE),
        (0.02, math.nan, False, ""),  # no test, no verdict
    ],
)
def test_verdicts(diff: float, p_holm: float, lower: bool, expected: str) -> None:
    assert fx.verdict(diff, p_holm, lower) == expected


# ------------------------------------------------------------- arms and their controls
def _controls(name: str) -> dict[str, dict]:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    configs = {str(t.overrides): t.overrides for t in grid_plan(space)}
    return {k: control_of(space, o) for k, o in configs.items()}, configs, space


def test_lambda_arms_are_compared_with_the_single_lambda_zero() -> None:
    controls, configs, space = _controls("lambda")
    assert space.control == {"loss.corr.weight": 0.0}
    targets = {str(c) for c in controls.values()}
    assert targets == {str({"loss.corr.weight": 0.0})}
    assert len(configs) == 11  # 5 λ × 2 kinds + λ = 0


def test_detectors_each_compared_with_itself_at_lambda_zero() -> None:
    controls, configs, _ = _controls("detectors")
    for key, overrides in configs.items():
        control = controls[key]
        assert control["loss.corr.weight"] == 0.0
        # The same detector (and ATSS's centerness, and Sparse R-CNN's CPU settings).
        assert {k: v for k, v in control.items() if k != "loss.corr.weight"} == {
            k: v for k, v in overrides.items() if k != "loss.corr.weight"
        }
        assert str(control) in configs  # every control is planned


def test_ablation_compares_every_combination_with_the_baseline() -> None:
    controls, configs, _ = _controls("ablation")
    baseline = {"assign.kind": "max_iou", "loss.dc.enabled": False, "nms.kind": "greedy"}
    assert {str(c) for c in controls.values()} == {str(baseline)}
    assert len(configs) == 8


def test_alignment_has_the_nine_arms_against_plain_focal_loss() -> None:
    controls, configs, space = _controls("alignment")
    plain = {"loss.cls.kind": "focal", "model.quality": "native", "loss.corr.weight": 0.0}
    assert {str(c) for c in controls.values()} == {str(plain)}
    arms = {
        (o["loss.cls.kind"], o.get("model.quality", "-"), o.get("loss.corr.weight", "-"))
        for o in configs.values()
    }
    assert arms == {
        ("focal", "native", 0.0),
        ("focal", "native", 0.2),
        ("focal", "iou", 0.0),  # IoU-aware scoring
        ("focal", "iou", 0.2),
        ("qfl", "-", 0.0),
        ("qfl", "-", 0.2),
        ("vfl", "-", 0.0),
        ("vfl", "-", 0.2),
        ("rs", "-", "-"),
    }
    # Every arm scored down to 0.001: RS Loss's scores stay below 0.05 on the tiny schedule.
    assert space.fixed == {"model.name": "atss", "nms.score_threshold": 0.001}
    assert space.repeats == 3


def test_every_shipped_space_declares_a_control_and_three_seeds() -> None:
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.control, path.name
        assert space.repeats == 3, path.name


def test_a_control_that_matches_nothing_or_is_no_parameter_is_an_error(tmp_path: Path) -> None:
    from detectors.config import ConfigError

    base = "name: c\nbase: smoke\nparameters:\n  loss.corr.weight: {values: [0.1, 0.2]}\n"
    for bad, match in [
        ("control: {loss.corr.weight: 0.0}", "not one of its values"),
        ("control: {loss.corr.kind: pearson}", "not a parameter of this space"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(base + bad + "\n")
        with pytest.raises(ConfigError, match=match):
            load_space(path)
    path.write_text(
        base.replace("[0.1, 0.2]", "[0.1, 0.2, 0.0]")
        + "max_trials: 2\ncontrol: {loss.corr.weight: 0.0}\n"
    )
    with pytest.raises(ConfigError, match="matches no planned configuration"):
        load_space(path)  # the grid is cut at 2 trials: λ = 0 is never planned


# --------------------------------------------------------------------- in the report
SPACE = """
name: eff
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.2, 0.4]}
control: {loss.corr.weight: 0.0}
repeats: 4
"""
# AP and oLRP per configuration and seed: λ 0.2 is clearly better, λ 0.4 is noise.
AP = {0.0: [0.50, 0.52, 0.49, 0.51], 0.2: [0.53, 0.55, 0.52, 0.54], 0.4: [0.49, 0.54, 0.50, 0.50]}
OLRP = {
    0.0: [0.60, 0.59, 0.61, 0.60],
    0.2: [0.57, 0.56, 0.58, 0.57],
    0.4: [0.61, 0.58, 0.60, 0.61],
}


def _ledger(tmp_path: Path) -> tuple:
    path = tmp_path / "eff.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    ledger = Ledger(tmp_path / "ledger.json", parent_run_id="p")
    for t in grid_plan(space):
        w = t.overrides["loss.corr.weight"]
        ledger.trials[t.key] = {
            "run_id": f"run-{t.key}",
            "status": "FINISHED",
            "overrides": t.overrides,
            "repeat": t.repeat,
            "seed": t.repeat,
            "metrics": {
                "AP": AP[w][t.repeat],
                "oLRP": OLRP[w][t.repeat],
                "AP_boot_sd": 0.004,
                "train_time_s": 10.0,
            },
        }
    return space, ledger


def test_effects_csv_has_the_columns_and_the_hand_computed_numbers(tmp_path: Path) -> None:
    space, ledger = _ledger(tmp_path)
    report = write_report(space, ledger, tmp_path / "results")
    rows = list(csv.DictReader(report.effects_csv.open()))
    assert list(rows[0]) == list(fx.CSV_COLUMNS)
    ap = {r["arm"]: r for r in rows if r["metric"] == "AP"}
    assert set(ap) == {"weight=0.2", "weight=0.4"}
    strong = ap["weight=0.2"]
    assert strong["control"] == "weight=0.0" and strong["n"] == "4"
    assert float(strong["diff"]) == pytest.approx(0.03)  # every seed +0.03 exactly
    assert float(strong["p_value"]) == 0.0 and strong["verdict"] == fx.BETTER
    weak = ap["weight=0.4"]
    diffs = np.array(AP[0.4]) - np.array(AP[0.0])
    ref = stats.ttest_rel(AP[0.4], AP[0.0])
    assert float(weak["p_value"]) == pytest.approx(ref.pvalue)
    assert float(weak["diff"]) == pytest.approx(diffs.mean())
    assert float(weak["p_perm"]) == pytest.approx(fx.sign_flip_p(list(diffs)))
    # Holm over the two arms: the larger p is multiplied by 1, the smaller by 2.
    assert float(weak["p_holm"]) == pytest.approx(max(ref.pvalue, 0.0))
    assert weak["verdict"] == fx.NO_DIFFERENCE
    olrp = {r["arm"]: r for r in rows if r["metric"] == "oLRP"}
    assert float(olrp["weight=0.2"]["diff"]) == pytest.approx(-0.03)  # lower: better
    assert olrp["weight=0.2"]["p_holm"] == "" and olrp["weight=0.2"]["verdict"] == ""


def test_summary_has_the_effects_section_best_first_and_the_noise(tmp_path: Path) -> None:
    space, ledger = _ledger(tmp_path)
    report = write_report(space, ledger, tmp_path / "results")
    text = report.summary.read_text()
    section = text[text.index("## Effects against the control") :]
    assert section.index("weight=0.2") < section.index("weight=0.4")  # best first
    assert "better" in section and "no detectable difference" in section
    assert "### Seed noise and evaluation-set noise" in text
    seed_sd = float(np.std(AP[0.0], ddof=1))
    assert f"{seed_sd:.4f}" in section and "0.0040" in section
    assert (tmp_path / "results/eff/AP_effects.png").read_bytes()[:4] == b"\x89PNG"
    lines = [fx.describe(e) for e in fx.ranked(report.effects, "AP", False)]
    assert lines[0].startswith("weight=0.2: AP +0.0300 [+0.0300, +0.0300], p (Holm) 0")
    assert lines[0].endswith("4 seeds — better")


def test_one_seed_gives_no_interval_and_no_verdict(tmp_path: Path) -> None:
    space, ledger = _ledger(tmp_path)
    ledger.trials = {k: e for k, e in ledger.trials.items() if e["repeat"] == 0}
    report = write_report(space, ledger, tmp_path / "results")
    text = report.summary.read_text()
    assert "One seed per configuration: no interval, no test and no verdict" in text
    assert all(e.verdict == "" for e in report.effects)
    for verdict in (fx.BETTER, fx.WORSE, fx.NO_DIFFERENCE):
        assert f"| {verdict} |" not in text  # no verdict without data
    assert "1 seed: no interval" in fx.describe(report.effects[0])
