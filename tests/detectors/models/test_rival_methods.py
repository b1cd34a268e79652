"""The rivals of SPEC §2.5 on the dense detectors: the classification-loss slot (QFL, VFL,
RS Loss) and IoU-aware scoring, each with and without correlation loss, wired as their
papers say: IoU targets detached from the step's decoded boxes, RS without num_pos and
with RS-Net's box balance, the quality branch's BCE and its test-time score."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from detectors import box_ops
from detectors.config import ExperimentConfig, load_config
from detectors.losses import quality_focal_loss, rank_sort_loss, varifocal_loss
from detectors.models import DETECTORS, DenseDetector, build_detector

DENSE = sorted(n for n, spec in DETECTORS.items() if spec.dense)
NUM_CLASSES = 3
METHODS: dict[str, dict[str, Any]] = {
    "focal": {},
    "qfl": {"loss.cls.kind": "qfl"},
    "vfl": {"loss.cls.kind": "vfl"},
    "rs": {"loss.cls.kind": "rs"},
    "iou-aware": {"model.quality": "iou"},
}


def smoke(name: str, **overrides: Any) -> ExperimentConfig:
    return load_config("smoke", overrides={"model.name": name, **overrides})


def batch(seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 64, 64, generator=gen)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 30.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def build(name: str, **overrides: Any) -> DenseDetector:
    torch.manual_seed(0)
    model = build_detector(smoke(name, **overrides), NUM_CLASSES)
    assert isinstance(model, DenseDetector)
    return model


@pytest.mark.parametrize("corr", [0.0, 0.2])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", DENSE)
def test_every_rival_trains_and_scores_on_every_dense_detector(
    name: str, method: str, corr: float
) -> None:
    model = build(name, **METHODS[method], **{"loss.corr.weight": corr})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = batch()
    for it in range(2):
        model.iteration = it
        losses, stats = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert stats["num_pos"] > 0
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    cls_terms = {"loss_rank", "loss_sort"} if method == "rs" else {"loss_cls"}
    quality = {"iou-aware": {"loss_iou"}}.get(method, set())
    if method == "focal" and DETECTORS[name].quality != "none":  # the detector's own branch
        quality = {f"loss_{DETECTORS[name].quality}"}
    assert set(losses) == cls_terms | {"loss_reg"} | quality | ({"loss_corr"} if corr else set())
    model.eval()
    out = model(*batch(1))
    for result in out:
        assert bool(((result["scores"] >= 0) & (result["scores"] <= 1)).all())
        assert len(result["pos_scores"]) == len(result["pos_ious"])


def _internals(model: DenseDetector) -> tuple[dict[str, Any], Any, Any, Any]:
    images, targets = batch()
    feats = model.backbone((images - model.pixel_mean) / model.pixel_std)
    outputs = model.head_outputs(feats, (64, 64))
    labels, matched, _ = model.match(outputs, targets)
    pos = model.gather_positives(outputs, targets, labels == 1, matched)
    return outputs, labels, pos, targets


@pytest.mark.parametrize(
    ("kind", "loss_fn"),
    [
        ("qfl", lambda x, y: quality_focal_loss(x, y, beta=2.0)),
        ("vfl", lambda x, y: varifocal_loss(x, y, alpha=0.75, gamma=2.0)),
    ],
)
def test_iou_target_losses_use_the_detached_iou_of_the_step_over_num_pos(
    kind: str, loss_fn: Any
) -> None:
    model = build("atss", **{"loss.cls.kind": kind})
    outputs, labels, pos, targets = _internals(model)
    losses, _ = model.losses(outputs, targets)
    valid = labels >= 0
    ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes).detach()
    want_targets = torch.zeros_like(outputs["cls_logits"])
    want_targets[labels == 1] = torch.nn.functional.one_hot(pos.gt_labels, 3) * ious[:, None]
    want = loss_fn(outputs["cls_logits"][valid], want_targets[valid]).sum() / len(ious)
    assert losses["loss_cls"].item() == pytest.approx(want.item(), rel=1e-5)
    # The IoU targets are supervision: no gradient reaches the box branch through them.
    model.zero_grad()
    losses["loss_cls"].backward()
    assert model.head.box_reg.weight.grad is None or not model.head.box_reg.weight.grad.any()
    assert model.head.cls_logits.weight.grad is not None


def test_rs_loss_is_taken_as_it_comes_and_balances_the_box_loss_by_value() -> None:
    model = build("atss", **{"loss.cls.kind": "rs", "loss.reg": "giou"})
    outputs, labels, pos, targets = _internals(model)
    losses, _ = model.losses(outputs, targets)
    valid = labels >= 0
    ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes).detach()
    iou_targets = torch.zeros_like(outputs["cls_logits"])
    iou_targets[labels == 1] = torch.nn.functional.one_hot(pos.gt_labels, 3) * ious[:, None]
    rank, sort = rank_sort_loss(
        outputs["cls_logits"][valid].flatten(), iou_targets[valid].flatten(), delta=0.5
    )
    # No division by the number of positives, no loss weight.
    assert losses["loss_rank"].item() == pytest.approx(rank.item(), rel=1e-6)
    assert losses["loss_sort"].item() == pytest.approx(sort.item(), rel=1e-6)
    # RS-Net: the box term equals L_RS in value (λ_box = L_RS / L_box, detached).
    assert losses["loss_reg"].item() == pytest.approx((rank + sort).item(), rel=1e-5)
    assert "loss_centerness" not in losses  # RS-Net drops ATSS's centerness (native: none)


def test_rs_box_gradient_is_the_score_weighted_giou_scaled_by_lambda() -> None:
    model = build("atss", **{"loss.cls.kind": "rs", "loss.reg": "giou"})
    outputs, _, pos, targets = _internals(model)
    losses, _ = model.losses(outputs, targets)
    weights = pos.logits.detach().sigmoid().max(dim=1).values
    per_pos = 1 - box_ops.elementwise_giou(pos.pred_boxes, pos.gt_boxes)
    mean_box = (weights * per_pos).sum() / weights.sum()
    scale = (losses["loss_rank"] + losses["loss_sort"]).detach() / mean_box.detach()
    (grad,) = torch.autograd.grad(losses["loss_reg"], outputs["box_reg"], retain_graph=True)
    (want,) = torch.autograd.grad(scale * mean_box, outputs["box_reg"])
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", ["retinanet", "fcos", "foveabox"])
def test_iou_aware_branch_learns_the_detached_iou_with_bce(name: str) -> None:
    model = build(name, **{"model.quality": "iou"})
    outputs, labels, pos, targets = _internals(model)
    losses, _ = model.losses(outputs, targets)
    ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes).detach()
    logits = outputs["quality"][labels == 1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, ious, reduction="sum")
    assert losses["loss_iou"].item() == pytest.approx(bce.item() / len(ious), rel=1e-5)
    model.zero_grad()
    losses["loss_iou"].backward()  # trains the IoU conv, never the boxes it scores
    assert model.head.quality is not None and model.head.quality.weight.grad is not None
    assert model.head.box_reg.weight.grad is None or not model.head.box_reg.weight.grad.any()


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_iou_aware_score_is_p_to_one_minus_alpha_times_q_to_alpha(alpha: float) -> None:
    overrides = {"model.quality": "iou", "model.quality_alpha": alpha, "nms.score_threshold": 0.0}
    model = build("retinanet", **overrides)
    model.eval()
    images, _ = batch()
    with torch.no_grad():
        feats = model.backbone((images - model.pixel_mean) / model.pixel_std)
        outputs = model.head_outputs(feats, (64, 64))
        scores = model.scores(outputs)
    p = outputs["cls_logits"].sigmoid()
    q = outputs["quality"].sigmoid()[..., None]
    torch.testing.assert_close(scores, p ** (1 - alpha) * q**alpha, rtol=1e-5, atol=1e-7)
    best = model(images)[0]["scores"].max().item()
    assert best == pytest.approx(scores[0].max().item(), rel=1e-6)  # NMS keeps the best


def test_native_quality_follows_the_detector_and_the_classification_loss() -> None:
    assert build("atss").quality is not None and build("atss").quality.target == "centerness"
    assert build("paa").quality is not None and build("paa").quality.loss_weight == 0.5
    assert build("retinanet").quality is None
    for kind in ("qfl", "vfl", "rs"):  # their scores are the quality: GFL, VFNet, RS-Net
        assert build("atss", **{"loss.cls.kind": kind}).quality is None
    explicit = build("atss", **{"loss.cls.kind": "qfl", "model.quality": "centerness"})
    assert explicit.quality is not None  # asked for: both
    assert math.isclose(build("fcos", **{"model.quality_alpha": 0.2}).quality.alpha, 0.2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss.cls.kind": "vfl", "loss.corr.weight": 0.2},
        {"loss.cls.kind": "rs"},
        {"model.quality": "iou", "loss.corr.weight": 0.2},
    ],
    ids=["vfl+corr", "rs", "iou-aware+corr"],
)
def test_the_measures_work_unchanged_for_the_rivals(
    overrides: dict[str, Any], tmp_path: Any, cache_dir: Any
) -> None:
    from detectors.engine import run_training

    cfg = smoke("atss", **overrides, **{"train.iterations": 2})
    final = run_training(cfg, out_dir=tmp_path, cache_dir=cache_dir)
    for key in ("AP", "AP50", "AP_upper", "AP_lower", "oLRP", "beta_img"):
        assert math.isfinite(final[key]), key
    assert final["AP_lower"] <= final["AP"] <= final["AP_upper"]
