"""Every detector of ``DETECTORS`` × correlation loss {on, off} trains and evaluates.

Parametrized over the name table, so a new detector is tested without touching this file.
Dense-head methods (DC loss, the NMS slot) run on the detectors that build a
:class:`DenseDetector`; the others (the NMS-free Sparse R-CNN) must refuse them clearly.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from detectors.config import ConfigError, ExperimentConfig, load_config
from detectors.engine import run_training
from detectors.models import DETECTORS, DenseDetector, SparseRCNN, build_detector, build_nms
from detectors.postprocess import NMS_METHODS

NAMES = sorted(DETECTORS)
NUM_CLASSES = 3


def smoke(name: str, **overrides: object) -> ExperimentConfig:
    return load_config("smoke", overrides={"model.name": name, **overrides})


# Which kind each table entry builds, read from what it builds (a new entry needs no edit).
DENSE = [n for n in NAMES if isinstance(build_detector(smoke(n), NUM_CLASSES), DenseDetector)]
SET_PREDICTORS = [n for n in NAMES if n not in DENSE]


def classifier_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers producing class logits: the dense head's, or every Sparse R-CNN stage's."""
    if isinstance(model, SparseRCNN):
        return [stage.class_logits for stage in model.head.stages]
    return [model.head.cls_logits]


def random_batch(seed: int, size: int = 64) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=gen)
    targets = []
    for num in (3, 1):
        xy = torch.rand(num, 2, generator=gen) * size / 2
        wh = 8 + torch.rand(num, 2, generator=gen) * size / 2
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (num,))})
    return images, targets


def train_two_steps(cfg: ExperimentConfig) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    torch.manual_seed(0)
    model = build_detector(cfg, NUM_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = random_batch(0)
    history = []
    for it in range(2):
        model.iteration = it
        losses, stats = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in (losses | stats).items()})
    return model, history


@pytest.mark.parametrize("corr_weight", [0.0, 0.2])
@pytest.mark.parametrize("name", NAMES)
def test_trains_two_steps_and_evaluates_finite(name: str, corr_weight: float) -> None:
    model, history = train_two_steps(smoke(name, **{"loss.corr.weight": corr_weight}))
    for record in history:
        # ρ is NaN when no pool is valid; everything else must be finite
        assert all(math.isfinite(v) for k, v in record.items() if "corr_coefficient" not in k)
        assert record["num_pos"] > 0  # every detector finds positives for 8-40 px boxes
        has_corr = any(key.startswith("loss_corr") for key in record)
        assert has_corr == (corr_weight > 0)
    model.eval()
    images, targets = random_batch(1)
    outputs = model(images, targets)
    assert len(outputs) == 2
    for out in outputs:
        assert torch.isfinite(out["boxes"]).all() and torch.isfinite(out["scores"]).all()
        assert bool(((out["scores"] >= 0) & (out["scores"] <= 1)).all())
        assert bool((out["labels"] < NUM_CLASSES).all())
        assert len(out["pos_scores"]) == len(out["pos_ious"])


@pytest.mark.parametrize("name", NAMES)
def test_correlation_loss_reaches_the_classifier(name: str) -> None:
    torch.manual_seed(0)
    model = build_detector(smoke(name, **{"loss.corr.weight": 1.0}), NUM_CLASSES)
    losses, _ = model(*random_batch(0))
    sum(v for k, v in losses.items() if k.startswith("loss_corr")).backward()
    for cls_layer in classifier_layers(model):
        assert cls_layer.weight.grad is not None and cls_layer.weight.grad.abs().sum() > 0


def test_the_kinds_cover_the_table() -> None:
    assert "retinanet" in DENSE and "sparse_rcnn" in SET_PREDICTORS


@pytest.mark.parametrize("name", DENSE)
def test_dc_loss_and_every_nms_apply(name: str) -> None:
    overrides = {"loss.dc.enabled": True, "nms.score_threshold": 0.0}  # keep every candidate
    model, history = train_two_steps(smoke(name, **overrides))
    assert all(math.isfinite(r["dc_weight_mean"]) for r in history)  # DC weighting ran
    model.eval()
    images = random_batch(1)[0]
    for nms in NMS_METHODS:
        cfg = smoke(name, **{"nms.kind": nms})
        model.nms = build_nms(cfg)
        out = model(images)[0]
        assert 0 < len(out["scores"]) <= cfg.nms.max_detections, nms
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all()), nms  # sorted by NMS


# Methods of dense heads, and the key naming each in the error.
DENSE_ONLY = [("loss.dc.enabled", True), ("assign.kind", "iac")] + [
    ("nms.kind", nms) for nms in NMS_METHODS if nms != "greedy"
]


@pytest.mark.parametrize(("key", "value"), DENSE_ONLY)
@pytest.mark.parametrize("name", SET_PREDICTORS)
def test_dense_head_methods_on_a_set_predictor_are_config_errors(
    name: str, key: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_detector(smoke(name, **{key: value}), NUM_CLASSES)


@pytest.mark.parametrize("name", SET_PREDICTORS)
def test_set_predictor_outputs_top_scores_without_nms(name: str) -> None:
    model, _ = train_two_steps(smoke(name))
    model.eval()
    cfg = smoke(name)
    for out in model(random_batch(1)[0]):
        assert len(out["scores"]) == cfg.nms.max_detections  # top-k, nothing suppressed
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
        assert bool((out["boxes"] >= 0).all() and (out["boxes"] <= 64).all())  # clipped


@pytest.mark.parametrize("name", ["fcos", "foveabox"])
def test_iac_on_a_point_based_head_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"assign\.kind.*anchor-based"):
        build_detector(smoke(name, **{"assign.kind": "iac"}), NUM_CLASSES)


def test_iac_applies_to_atss() -> None:
    _, history = train_two_steps(smoke("atss", **{"assign.kind": "iac", "assign.score_thr": 0.01}))
    assert sum(r["recalled_anchors"] for r in history) > 0  # IAC, not ATSS, assigned


@pytest.mark.parametrize("name", ["atss", "fcos"])
def test_centerness_branch_is_optional(name: str) -> None:
    _, with_ctr = train_two_steps(smoke(name))
    _, without = train_two_steps(smoke(name, **{"model.quality": "none"}))
    assert with_ctr[0]["loss_centerness"] > 0
    assert "loss_centerness" not in without[0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", NAMES)
def test_runs_through_run_training(name: str, tmp_path: Path, cache_dir: Path) -> None:
    cfg = smoke(name, **{"loss.corr.weight": 0.2, "train.iterations": 2})
    final = run_training(cfg, out_dir=tmp_path, cache_dir=cache_dir)
    for key in ("AP", "AP50", "AP75", "oLRP", "beta_img"):
        assert math.isfinite(final[key]), key
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "checkpoint.pt").exists()
