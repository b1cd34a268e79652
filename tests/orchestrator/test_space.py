from __future__ import annotations

import json
from pathlib import Path

import pytest

from detectors.config import ConfigError
from orchestrator.space import grid_plan, load_space, short_name, trial_config

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


VALID = """
name: demo
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
  loss.corr.kind: {values: [pearson, spearman], when: {loss.corr.weight: [0.2]}}
"""


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_is_valid_and_plans(path: Path) -> None:
    space = load_space(path)
    if space.method == "grid":
        plan = grid_plan(space)
        assert len(plan) >= 2
        assert len({t.key for t in plan}) == len(plan)
        for trial in plan:
            cfg = trial_config(space, trial.overrides)
            for key, value in trial.overrides.items():
                section, *rest = key.split(".")
                node = getattr(cfg, section)
                for part in rest:
                    node = getattr(node, part)
                assert node == value


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_trial_of_every_shipped_space_sets_only_what_it_reads(path: Path) -> None:
    from orchestrator.plan import plan_sweep

    for preset in (None, "smoke"):  # its own base, and the one the tests swap in
        assert plan_sweep(load_space(path, preset=preset), {}) or load_space(path).max_trials


def test_a_metric_of_one_class_is_a_metric(tmp_path: Path) -> None:
    text = VALID.replace("name: AP,", "name: AP/circle,")
    assert load_space(write(tmp_path, text)).metric == "AP/circle"


UNREAD = """
name: demo
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  model.name: {values: [retinanet, atss]}
  assign.fg_iou: {values: [0.5, 0.6]}
"""


def test_a_parameter_a_trial_does_not_read_is_an_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    from orchestrator.plan import plan_sweep

    space = load_space(write(tmp_path, UNREAD))  # valid on its own: the values are
    with pytest.raises(ConfigError) as info:
        plan_sweep(space, {})
    assert (info.value.source, info.value.key) == (space.path, "parameters.assign.fg_iou")
    assert info.value.problem == (
        "not used by model.name=atss: its assigner is ATSS (model.atss_topk) "
        "(in the trial model.name=atss, assign.fg_iou=0.6)"
    )
    # `when` plans it only for the detector that reads it.
    fixed = UNREAD.replace("[0.5, 0.6]}", "[0.5, 0.6], when: {model.name: [retinanet]}}")
    assert len(plan_sweep(load_space(write(tmp_path, fixed)), {})) == 3


def test_a_tpe_parameter_no_trial_reads_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    from orchestrator.plan import plan_sweep

    tpe = """
name: demo
base: smoke
method: tpe
max_trials: 4
fixed: {model.name: atss}
parameters:
  loss.corr.weight: {distribution: uniform, min: 0.0, max: 0.5}
  assign.fg_iou: {distribution: uniform, min: 0.5, max: 0.7}
"""
    with pytest.raises(ConfigError) as info:
        plan_sweep(load_space(write(tmp_path, tpe)), {})
    assert info.value.key == "parameters.assign.fg_iou" and "model.name=atss" in str(info.value)
    assert plan_sweep(load_space(write(tmp_path, tpe.replace("atss", "retinanet"))), {}) == []


def test_a_fixed_value_or_a_set_nothing_reads_names_where_it_was_set(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    fixed = VALID + "fixed: {model.name: fcos, model.atss_topk: 5}\n"
    with pytest.raises(ConfigError) as info:
        plan_sweep(load_space(write(tmp_path, fixed)), {})
    assert info.value.key == "fixed.model.atss_topk" and "model.name=fcos" in info.value.problem
    with pytest.raises(ConfigError) as info:
        plan_sweep(load_space(write(tmp_path, VALID)), {"nms.beta": 2.0})
    assert (info.value.source, info.value.key) == ("--set", "nms.beta")


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_dry_runs_with_its_control(path: Path) -> None:
    from orchestrator.plan import describe_plan, plan_sweep

    space = load_space(path, preset="smoke")
    text = describe_plan(space, plan_sweep(space, {}), set())
    control = [line for line in text.splitlines() if line.startswith("control: ")]
    assert len(control) == 1 and "compared with it" in control[0]
    assert f"{len(grid_plan(space))} trial(s) to run" in text


def test_when_collapses_inactive_parameter(tmp_path: Path) -> None:
    plan = grid_plan(load_space(write(tmp_path, VALID)))
    overrides = [t.overrides for t in plan]
    assert overrides == [
        {"loss.corr.weight": 0.0},
        {"loss.corr.weight": 0.2, "loss.corr.kind": "pearson"},
        {"loss.corr.weight": 0.2, "loss.corr.kind": "spearman"},
    ]


def test_repeats_add_seeds_and_keys_are_stable(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID + "repeats: 3\n"))
    plan = grid_plan(space)
    assert len(plan) == 9
    assert sorted({t.repeat for t in plan}) == [0, 1, 2]
    assert [t.key for t in plan] == [t.key for t in grid_plan(space)]
    # Repeat r of every configuration trains with the base seed + r (paired seeds).
    seeds = {
        (t.repeat, trial_config(space, t.overrides, repeat=t.repeat).train.seed) for t in plan
    }
    assert seeds == {(0, 0), (1, 1), (2, 2)}
    shifted = trial_config(space, plan[0].overrides, {"train.seed": 10}, repeat=2)
    assert shifted.train.seed == 12  # --set train.seed shifts every repeat's seed


def test_raising_repeats_keeps_the_keys_of_the_seeds_already_planned(tmp_path: Path) -> None:
    one = grid_plan(load_space(write(tmp_path, VALID + "repeats: 1\n")))
    three = grid_plan(load_space(write(tmp_path, VALID + "repeats: 1\n"), repeats=3))
    assert {t.key for t in one} < {t.key for t in three}
    assert len(three) == 3 * len(one)


def test_preset_option_replaces_base(tmp_path: Path) -> None:
    assert load_space(write(tmp_path, VALID), preset="tiny").base == "tiny"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (VALID + "repeets: 2\n", "repeets", "unknown key (did you mean 'repeats'?)"),
        (
            VALID.replace("loss.corr.weight:", "loss.corr.wait:"),
            "parameters.loss.corr.wait",
            "not a config key",
        ),
        (
            VALID.replace("[0.0, 0.2]", "[0.0, -1.0]"),
            "parameters.loss.corr.weight.values[1]",
            "non-negative",
        ),
        (
            VALID.replace("[pearson, spearman]", "[pearson, kendall]"),
            "parameters.loss.corr.kind.values[1]",
            "must be one of",
        ),
        (VALID.replace("base: smoke", "base: huge"), "base", "unknown preset"),
        (VALID + "method: bayes\n", "method", "grid, random or tpe"),
        (VALID + "repeats: 0\n", "repeats", "at least 1"),
        (VALID.replace("goal: maximize", "goal: up"), "metric.goal", "maximize or minimize"),
        (
            VALID.replace("name: AP,", "name: APP,"),
            "metric.name",
            "'APP' is not a metric the evaluation produces (did you mean 'AP'?); choose from "
            "AP, AP50,",
        ),
        (VALID + "budget: {gpu_hours: 2}\n", "budget.gpu_hours", "request no GPU"),
        (VALID + "budget: {cpu_hours: 0}\n", "budget.cpu_hours", "must be positive"),
        (VALID + "budget: {hours: 2}\n", "budget.hours", "expected gpu_hours, cpu_hours"),
        (VALID + "budget: 4\n", "budget", "a mapping"),
        (VALID + "scheduler: {kind: hyperband}\n", "scheduler.kind", "none or asha"),
        (VALID + "scheduler: {kind: asha, grace: 2}\n", "scheduler.grace", "unknown key"),
        (
            VALID + "scheduler: {kind: asha, reduction_factor: 1}\n",
            "scheduler.reduction_factor",
            "at least 2",
        ),
    ],
)
def test_bad_space_names_file_key_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert info.value.key == key
    assert problem in str(info.value)
    assert str(path) in str(info.value)


def test_relative_data_root_is_made_absolute_for_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    space = load_space(write(tmp_path, VALID))
    cfg = trial_config(space, {}, {"data.root": "VOCdevkit/VOC2007+VOC2012"})
    first, second = cfg.data.root.split("+")
    assert first == str(tmp_path / "VOCdevkit" / "VOC2007")
    assert second == str(tmp_path / "VOCdevkit" / "VOC2012")  # next to the first part
    assert trial_config(space, {}).data.root == ""  # the synthetic default stays a cache


def test_split_files_without_a_root_are_made_absolute_and_fits_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    (tmp_path / "pics").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "pics" / "a.png")
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 16, 16]}],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(ann))
    monkeypatch.chdir(tmp_path)
    space = load_space(write(tmp_path, VALID))
    files = {"data.kind": "coco", "data.train.ann_file": "train.json", "data.train.images": "pics"}
    cfg = trial_config(space, {}, files | {"fit.geometry": "auto", "fit.schedule": "auto"})
    assert cfg.data.train.ann_file == str(tmp_path / "train.json")
    assert cfg.data.train.images == str(tmp_path / "pics")
    # fitted here, in the driver: the numbers are what MLflow logs for the trial
    assert (cfg.fit.geometry, cfg.fit.schedule) == ("fitted", "fitted")
    assert cfg.train.iterations == 6  # 24 epochs of 1 image in batches of 4
    # 16 px boxes at 64 px: the reach starts at 16 px with scale 16 sqrt2 / 8 on P3
    assert (cfg.model.min_level, cfg.model.anchor_scale) == (3, 2.828)


def test_short_names_disambiguate_colliding_leaves() -> None:
    keys = ["assign.kind", "loss.dc.enabled", "nms.kind"]
    assert [short_name(k, keys) for k in keys] == ["assign.kind", "enabled", "nms.kind"]
    assert short_name("loss.corr.weight", ["loss.corr.weight"]) == "weight"


def test_budget_in_gpu_and_cpu_hours(tmp_path: Path) -> None:
    gpu = VALID + "resources: {gpus_per_worker: 0.5}\nbudget: {gpu_hours: 4, cpu_hours: 8}\n"
    budget = load_space(write(tmp_path, gpu)).budget
    assert (budget.gpu_hours, budget.cpu_hours) == (4.0, 8.0)
    assert load_space(write(tmp_path, VALID)).budget.gpu_hours == 0.0  # no budget


def test_asha_needs_intermediate_evaluations(tmp_path: Path) -> None:
    from orchestrator.plan import plan_sweep

    asha = VALID + "scheduler: {kind: asha}\n"
    space = load_space(write(tmp_path, asha))
    with pytest.raises(ConfigError, match="asha needs intermediate evaluations") as info:
        plan_sweep(space, {})
    assert info.value.key == "scheduler.kind"
    # Evaluations every 2 iterations, from the space or from --set: planned.
    with_evals = load_space(write(tmp_path, asha + "fixed: {train.eval_every: 2}\n"))
    assert len(plan_sweep(with_evals, {})) == 3
    assert len(plan_sweep(space, {"train.eval_every": 2})) == 3


@pytest.mark.slow
@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_trial_of_every_shipped_space_trains_on_smoke(
    path: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each distinct configuration a shipped space plans (repeats differ only in the seed)
    builds, trains two steps and evaluates to a finite AP on the smoke preset: a space that
    only fails inside a sweep, hours in, fails here instead. Ray is exercised elsewhere."""
    import math

    from detectors.engine import run_training

    space = load_space(path, preset="smoke")
    cache = tmp_path_factory.getbasetemp() / "smoke-cache"
    seen: set[str] = set()
    for trial in grid_plan(space):
        overrides = trial.overrides
        if repr(sorted(overrides.items())) in seen:
            continue
        seen.add(repr(sorted(overrides.items())))
        cfg = trial_config(space, overrides, {"train.iterations": 2})
        final = run_training(cfg, out_dir=tmp_path / trial.key, cache_dir=cache)
        assert math.isfinite(final["AP"]) and math.isfinite(final["oLRP"]), trial.overrides
    assert len(seen) >= 2
