"""The CLI through typer's runner, with the heavy call patched (fastapi-cli style)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from unittest import mock

import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep import SweepResult

SPACE = """
name: clidemo
base: smoke
metric: {name: AP, goal: maximize}
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
  loss.corr.kind: {values: [pearson, spearman], when: {loss.corr.weight: [0.2]}}
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner()


def test_misspelt_top_level_key_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPACE + "repeets: 3\n")
    # The real run_sweep validates; only the Ray part (the heavy call) is patched.
    with mock.patch("orchestrator.sweep._run_trials") as run:
        result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert str(bad) in lines[0] and "repeets" in lines[0] and "did you mean 'repeats'" in lines[0]
    assert "Traceback" not in result.output
    run.assert_not_called()
    assert not (tmp_path / ".corrtune").exists()  # nothing half-written
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_file_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "Traceback" not in result.output


def test_bad_set_value_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    result = runner.invoke(app, ["sweep", str(space), "--dry-run", "--set", "train.iterations=0"])
    assert result.exit_code == 2
    assert "train.iterations" in result.output and "Traceback" not in result.output


def test_a_setting_the_detector_does_not_read_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    with mock.patch("detectors.engine.run_training") as train:
        result = runner.invoke(
            app,
            [
                "train",
                "--preset",
                "smoke",
                "--set",
                "model.name=atss",
                "--set",
                "assign.fg_iou=0.7",
            ],
        )
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "corrtune: error: --set: assign.fg_iou: not used by model.name=atss: its assigner is "
        "ATSS (model.atss_topk)"
    )
    train.assert_not_called()
    space = tmp_path / "s.yaml"
    space.write_text(SPACE + "  assign.fg_iou: {values: [0.5, 0.7]}\nfixed: {model.name: fcos}\n")
    with mock.patch("orchestrator.sweep._run_trials") as run:
        for args in (["--dry-run", "--no-measure"], []):
            result = runner.invoke(app, ["sweep", str(space), *args])
            assert result.exit_code == 2, result.output
            assert (
                f"{space}: parameters.assign.fg_iou: not used by model.name=fcos" in result.output
            )
    run.assert_not_called()


def test_a_metric_the_evaluation_does_not_produce_is_exit_2(
    runner: CliRunner, tmp_path: Path
) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE.replace("{name: AP, goal: maximize}", "{name: APP}"))
    with mock.patch("orchestrator.sweep._run_trials") as run:
        for args in (["--dry-run", "--no-measure"], ["--preset", "smoke"]):
            result = runner.invoke(app, ["sweep", str(space), *args])
            assert result.exit_code == 2, result.output
            assert "metric.name: 'APP' is not a metric the evaluation produces" in result.output
            assert "oLRP" in result.output  # the message lists them
    run.assert_not_called()


def test_dry_run_prints_the_plan_and_runs_nothing(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    with mock.patch("orchestrator.sweep.run_sweep") as run:
        result = runner.invoke(
            app,
            ["sweep", str(space), "--dry-run", "--set", "train.iterations=7", "--no-measure"],
        )
    assert result.exit_code == 0, result.output
    run.assert_not_called()
    assert "3 trials" in result.output
    assert "3 trial(s) to run" in result.output
    rows = [ln for ln in result.output.splitlines() if ln.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(rows) == 3 and all(" 7 " in r and r.endswith("to run") for r in rows)
    assert "cost estimate: not measured (--no-measure); 3 trial(s)" in result.output
    assert not (tmp_path / ".corrtune").exists()


def test_dry_run_measures_steps_and_estimates_the_cost(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    result = runner.invoke(
        app,
        ["sweep", str(space), "--dry-run", "--max-concurrent", "1", "--set", "train.iterations=7"],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    match = re.search(r"cost estimate: ([0-9.]+) s per iteration, ([0-9.]+) s per evaluation", out)
    assert match, out
    per_iter, per_eval = float(match[1]), float(match[2])
    assert 0 < per_iter < 60 and 0 < per_eval < 600
    assert "(measured: 3 steps of the base config here, CPU" in out
    assert "3 trial(s), 1 at a time: about " in out
    assert "0.000 GPU-hours" in out  # a CPU space
    assert not (tmp_path / ".corrtune").exists()  # the data for the steps went to a temp dir


def test_sweep_passes_options_to_run_sweep(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    done = SweepResult("clidemo", "p", {}, 1.0, None, "FINISHED")
    with mock.patch("orchestrator.sweep.run_sweep", return_value=done) as run:
        result = runner.invoke(
            app,
            [
                "sweep",
                str(space),
                "--resume",
                "--preset",
                "tiny",
                "--set",
                "train.iterations=3",
                "--address",
                "10.0.0.1:6379",
                "--storage",
                "/shared/ckpt",
                "--tracking-uri",
                "http://mlflow:5000",
            ],
        )
    assert result.exit_code == 0, result.output
    (path, opts), _ = run.call_args
    assert path == space
    assert opts.resume and opts.preset == "tiny"
    assert opts.overrides == {"train.iterations": 3}
    assert (opts.address, opts.storage, opts.tracking_uri) == (
        "10.0.0.1:6379",
        "/shared/ckpt",
        "http://mlflow:5000",
    )


def test_interrupted_sweep_exits_nonzero(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    killed = SweepResult("clidemo", "p", {}, 1.0, None, "KILLED")
    with mock.patch("orchestrator.sweep.run_sweep", return_value=killed):
        result = runner.invoke(app, ["sweep", str(space)])
    assert result.exit_code == 130
    failed = SweepResult("clidemo", "p", {}, 1.0, None, "FAILED")
    with mock.patch("orchestrator.sweep.run_sweep", return_value=failed):
        result = runner.invoke(app, ["sweep", str(space)])
    assert result.exit_code == 1
    stopped = SweepResult("clidemo", "p", {}, 1.0, None, "STOPPED")  # its budget was spent
    with mock.patch("orchestrator.sweep.run_sweep", return_value=stopped):
        result = runner.invoke(app, ["sweep", str(space)])
    assert result.exit_code == 0


def test_report_failure_after_a_sweep_is_a_warning_and_exit_0(
    runner: CliRunner, tmp_path: Path
) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    (tmp_path / "results").write_text("a file where the results folder goes")
    # The real run_sweep; only Ray (the heavy part) is left out.
    with (
        mock.patch("orchestrator.ray_runtime.start_ray", return_value=False),
        mock.patch("orchestrator.sweep._run_trials", return_value="FINISHED") as run,
    ):
        result = runner.invoke(app, ["sweep", str(space), "--preset", "smoke"])
    run.assert_called_once()
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    warnings = [ln for ln in lines if ln.startswith("warning")]
    assert len(warnings) == 1, result.output
    assert not any(ln.startswith("report: ") for ln in lines)  # no report was written
    assert warnings[0].startswith("warning: the report in ")
    assert "the runs are saved" in warnings[0]
    assert warnings[0].endswith(f"retry with: corrtune report {space} --preset smoke")
    # The retry, while the folder is still blocked: a user error, one line, exit 2.
    again = runner.invoke(app, ["report", str(space), "--preset", "smoke"])
    assert again.exit_code == 2
    lines = [ln for ln in again.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("corrtune: error: ")
    assert "results" in lines[0] and "Traceback" not in again.output
    (tmp_path / "results").unlink()  # the cause fixed: the retry writes the report
    fixed = runner.invoke(app, ["report", str(space), "--preset", "smoke"])
    assert fixed.exit_code == 0, fixed.output
    assert (tmp_path / "results" / "clidemo" / "summary.md").exists()


def test_report_of_a_sweep_that_never_ran_is_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    result = runner.invoke(app, ["report", str(space)])
    assert result.exit_code == 2
    assert "no sweep named 'clidemo'" in result.output


def _coco_folder(root: Path, names: list[str], splits: tuple[str, ...] = ("train", "val")) -> Path:
    """A COCO dataset in the images/ + annotations/ layout: one 64 x 48 image per split."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split in splits:
        Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "images" / f"{split}.png")
        data = {
            "images": [{"id": 1, "file_name": f"{split}.png", "width": 64, "height": 48}],
            "annotations": [
                {"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": [4 + 20 * i, 4, 16, 16]}
                for i in range(len(names))
            ],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return root


def _data_keys(root: Path, train: str, val: str, kind: str = "coco") -> dict[str, object]:
    return {
        "data.kind": kind,
        "data.root": str(root),
        "data.classes": [],
        "data.train.ann_file": "",
        "data.train.images": "",
        "data.val.ann_file": "",
        "data.val.images": "",
        "data.train_split": train,
        "data.val_split": val,
    }


def test_eval_passes_data_and_split_as_overrides(runner: CliRunner, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    _coco_folder(tmp_path / "mine", ["cell"], splits=("train2017", "val2017", "test2017"))
    with mock.patch(
        "orchestrator.evaluation.evaluate_checkpoint", return_value={"AP": 0.5}
    ) as evaluate:
        result = runner.invoke(
            app,
            ["eval", str(ckpt), "--data", "mine", "--split", "test2017", "--set", "nms.kind=soft"],
        )
    assert result.exit_code == 0, result.output
    assert '"AP": 0.5' in result.output
    overrides = evaluate.call_args.args[1]
    assert overrides == _data_keys(tmp_path / "mine", "train2017", "val2017") | {
        "data.val_split": "test2017",  # --split wins
        "nms.kind": "soft",
    }


def test_data_is_detected_for_train_and_sweep(runner: CliRunner, tmp_path: Path) -> None:
    _coco_folder(tmp_path / "mine", ["cell"])
    with mock.patch("detectors.engine.run_training", return_value={"AP": 0.1}) as train:
        result = runner.invoke(
            app, ["train", "--preset", "smoke", "--data", "mine", "--set", "data.val_split=train"]
        )
    assert result.exit_code == 0, result.output
    cfg = train.call_args.args[0]
    assert (cfg.data.kind, cfg.data.root) == ("coco", str(tmp_path / "mine"))
    assert (cfg.data.train_split, cfg.data.val_split) == ("train", "train")  # --set wins
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    done = SweepResult("clidemo", "p", {}, 1.0, None, "FINISHED")
    with mock.patch("orchestrator.sweep.run_sweep", return_value=done) as run:
        result = runner.invoke(app, ["sweep", str(space), "--data", "mine"])
    assert result.exit_code == 0, result.output
    (_, opts), _ = run.call_args
    assert opts.overrides == _data_keys(tmp_path / "mine", "train", "val")


def test_bad_data_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    for args in (
        ["train", "--preset", "smoke", "--data", "empty"],
        ["sweep", str(space), "--data", "empty", "--dry-run"],
        ["data", "check", "--data", "empty"],
        ["eval", str(tmp_path / "x.pt"), "--data", "empty"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "cannot tell the dataset layout" in lines[0], args
    _coco_folder(tmp_path / "one", ["cell"], splits=("only",))
    result = runner.invoke(app, ["train", "--preset", "smoke", "--data", "one"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no COCO split 'train' (splits here: only;" in result.output


def test_data_check_reports_the_geometry(runner: CliRunner, tmp_path: Path) -> None:
    _coco_folder(tmp_path / "mine", ["cell", "dot"])
    result = runner.invoke(app, ["data", "check", "--data", "mine", "--preset", "bccd"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "coco dataset" in out and "coco-annotations layout" in out
    # 16 px boxes of a 64 px image at bccd's 256 px: 64 px sides
    assert "box sizes at 256 px (retinanet: anchors 20-127 px on P3-P5" in out
    assert re.search(r"cell\s+2\s+64\.0\s+64\.0\s+64\.0\s+1\.00", out), out
    fitted = runner.invoke(app, ["data", "check", "mine"])  # the custom-cpu preset fits
    assert "preset custom-cpu fits to these boxes (fit.* auto): data.image_size=" in fitted.output


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detectors.config import load_config
    from detectors.engine import run_training

    out = tmp_path_factory.mktemp("ckpt")
    cfg = load_config("smoke", overrides={"train.iterations": 1})
    run_training(cfg, out_dir=out / "run", cache_dir=out / "cache")
    return out / "run" / "checkpoint.pt"


def test_eval_on_other_classes_is_one_line_naming_both(
    runner: CliRunner, tmp_path: Path, smoke_checkpoint: Path
) -> None:
    from detectors.data import SHAPE_CLASSES

    _coco_folder(tmp_path / "other", ["ring", "cat"])
    result = runner.invoke(app, ["eval", str(smoke_checkpoint), "--data", "other"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert str(list(SHAPE_CLASSES)) in lines[0] and "['ring', 'cat']" in lines[0]
    assert "1 names are shared (ring): --classes-by-name" in lines[0]
    mapped = runner.invoke(
        app, ["eval", str(smoke_checkpoint), "--data", "other", "--classes-by-name"]
    )
    assert mapped.exit_code == 0, mapped.output
    assert '"AP/ring"' in mapped.output and '"AP/cat"' not in mapped.output
    _coco_folder(tmp_path / "disjoint", ["cat"])
    result = runner.invoke(app, ["eval", str(smoke_checkpoint), "--data", "disjoint"])
    assert result.exit_code == 2 and "no class name is shared" in result.output
    _coco_folder(tmp_path / "shuffled", list(reversed(SHAPE_CLASSES)))  # same names
    result = runner.invoke(app, ["eval", str(smoke_checkpoint), "--data", "shuffled"])
    assert result.exit_code == 0, result.output


def test_eval_of_a_missing_checkpoint_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path / "none.pt")])
    assert result.exit_code == 2
    assert "none.pt: no such checkpoint file" in result.output


def test_eval_reads_checkpoints_from_before_model_quality_and_refuses_unread_sets(
    runner: CliRunner, tmp_path: Path, smoke_checkpoint: Path
) -> None:
    import torch

    state = torch.load(smoke_checkpoint, map_location="cpu", weights_only=False)
    state["config"]["model"].pop("quality")
    state["config"]["model"].pop("quality_alpha")
    state["config"]["model"]["centerness"] = True  # what a checkpoint used to hold
    state["config"]["loss"].pop("cls")
    state["model"] = {  # RetinaNetHead's box conv was named bbox_pred
        k.replace("head.box_reg.", "head.bbox_pred."): v for k, v in state["model"].items()
    }
    old = tmp_path / "old.pt"
    torch.save(state, old)
    now = runner.invoke(app, ["eval", str(smoke_checkpoint)])
    then = runner.invoke(app, ["eval", str(old)])
    assert now.exit_code == then.exit_code == 0, then.output
    assert json.loads(then.output)["AP"] == json.loads(now.output)["AP"]
    unread = runner.invoke(app, ["eval", str(smoke_checkpoint), "--set", "nms.beta=2.0"])
    assert unread.exit_code == 2
    assert unread.output.startswith(
        "corrtune: error: --set: nms.beta: not used by nms.kind=greedy: only cl_balanced reads it"
    )
