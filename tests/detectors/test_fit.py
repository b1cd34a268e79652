"""fit.* at auto: numbers from the training boxes, recorded so the run repeats without it."""

from __future__ import annotations

from pathlib import Path

import torch

from detectors.config import from_dict, load_config, to_dict
from detectors.data import SHAPE_CLASSES
from detectors.engine import run_training
from detectors.fit import fit_config, fitted_values, geometry_report, training_box_sizes

AUTO = {"fit.image_size": "auto", "fit.geometry": "auto", "fit.schedule": "auto"}


def test_fitting_writes_numbers_and_marks_them_fitted(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=AUTO | {"data.image_size": 96, "fit.min_image_size": 64})
    fitted = fit_config(cfg, tmp_path)
    assert (fitted.fit.image_size, fitted.fit.geometry, fitted.fit.schedule) == ("fitted",) * 3
    changed = fitted_values(cfg, fitted)
    assert set(changed) <= {
        "data.image_size",
        "model.min_level",
        "model.max_level",
        "model.anchor_scale",
        "train.iterations",
    }
    # 24 epochs of the 16 training images in batches of 4
    assert fitted.train.iterations == 96 and changed["train.iterations"] == 96
    assert fit_config(fitted, tmp_path) == fitted  # nothing left to fit
    assert from_dict(to_dict(fitted)) == fitted  # the logged config repeats the run
    assert fit_config(cfg, tmp_path) == fitted  # deterministic
    # the fitted geometry reaches the boxes the fit was made for
    report = geometry_report(training_box_sizes(cfg, tmp_path), fitted)
    assert report.reach is not None and not report.worth_a_warning


def test_a_run_checkpoints_the_fitted_config(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides={"fit.geometry": "auto", "train.iterations": 1})
    run_training(cfg, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    saved = from_dict(state["config"])
    assert saved == fit_config(cfg, tmp_path / "cache") and saved.fit.geometry == "fitted"
    assert state["classes"] == list(SHAPE_CLASSES)
