"""Sparse R-CNN: stage outputs, deep supervision, correlation loss per stage, the NMS-free
output contract and the configuration it refuses."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.config import ConfigError, ExperimentConfig, load_config
from detectors.losses import correlation_loss
from detectors.models import SparseRCNN, build_detector
from detectors.models.sparse_rcnn import MultiLevelRoIAlign, SparseRCNNStage

NUM_CLASSES = 3
Targets = list[dict[str, torch.Tensor]]


def smoke(**overrides: object) -> ExperimentConfig:
    return load_config("smoke", overrides={"model.name": "sparse_rcnn", **overrides})


def build(**overrides: object) -> SparseRCNN:
    torch.manual_seed(0)
    model = build_detector(smoke(**overrides), NUM_CLASSES)
    assert isinstance(model, SparseRCNN)
    return model


def batch() -> tuple[torch.Tensor, Targets]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=gen)
    targets = [
        {
            "boxes": torch.tensor(
                [[4.0, 4.0, 30.0, 30.0], [20.0, 30.0, 60.0, 62.0], [40, 2, 60, 20]]
            ),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def stage(model: SparseRCNN, k: int) -> SparseRCNNStage:
    module = model.head.stages[k]
    assert isinstance(module, SparseRCNNStage)
    return module


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("num_proposals", [100, 300])
def test_every_stage_predicts_every_proposal(num_proposals: int) -> None:
    model = build(**{"model.num_proposals": num_proposals})
    images, _ = batch()
    features = model.backbone(images)
    outputs = model.head(features, torch.tensor([[64.0, 64.0, 64.0, 64.0]] * 2))
    assert len(outputs) == 6  # the default num_stages
    for out in outputs:
        assert out["cls_logits"].shape == (2, num_proposals, NUM_CLASSES)
        assert out["pred_boxes"].shape == (2, num_proposals, 4)
        assert torch.isfinite(out["pred_boxes"]).all()


def test_proposals_start_as_the_whole_image() -> None:
    model = build()
    unit = model.head.init_proposal_boxes.weight  # normalised cxcywh
    assert torch.equal(unit, torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand_as(unit))
    # the un-padded size of each image, when the targets say it (the reference's images_whwh)
    images, targets = batch()
    targets[0]["size"], targets[1]["size"] = (48, 64), (64, 40)  # type: ignore[assignment]
    whwh = model.image_whwh(images, targets)
    assert whwh.tolist() == [[64.0, 48.0, 64.0, 48.0], [40.0, 64.0, 40.0, 64.0]]
    assert model.image_whwh(images, None).tolist() == [[64.0, 64.0, 64.0, 64.0]] * 2


def test_roi_level_follows_the_fpn_rule_and_pools_from_that_level() -> None:
    pooler = MultiLevelRoIAlign([2, 3, 4, 5], output_size=2, sampling_ratio=2)
    sides = torch.tensor([8.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    # ⌊4 + log2(side / 224)⌋ clamped to [2, 5], as an index into the levels
    assert pooler.level_of(boxes).tolist() == [0, 0, 1, 2, 2, 3, 3]
    # every level's map is filled with its own level number: the pooled value says which
    features = [torch.full((1, 1, 2048 // 2**lvl, 2048 // 2**lvl), float(lvl)) for lvl in (2, 3)]
    features += [torch.full((1, 1, 2048 // 2**lvl, 2048 // 2**lvl), float(lvl)) for lvl in (4, 5)]
    pooled = pooler(features, boxes[None])
    assert pooled.shape == (7, 1, 2, 2)
    assert pooled.amax(dim=(1, 2, 3)).tolist() == [2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 5.0]


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("num_stages", [1, 2, 6])
def test_losses_at_every_stage(num_stages: int) -> None:
    model = build(**{"model.num_stages": num_stages})
    losses, stats = model(*batch())
    for name in ("loss_cls", "loss_l1", "loss_giou"):
        per_stage = [k for k in losses if k.startswith(f"{name}_s")]
        assert per_stage == [f"{name}_s{k}" for k in range(num_stages)]
    assert not any(k.startswith("loss_corr") for k in losses)  # λ_corr = 0 by default
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert stats["num_pos"].item() == 4  # every ground truth is matched (N > M)
    assert math.isfinite(stats["corr_coefficient"].item())  # ρ is logged even at λ = 0


def test_boxes_are_detached_between_stages_but_features_are_not() -> None:
    model = build(**{"model.num_stages": 2})
    losses, _ = model(*batch())
    (losses["loss_l1_s1"] + losses["loss_giou_s1"]).backward()
    first, second = stage(model, 0), stage(model, 1)
    assert first.bbox_deltas.weight.grad is None  # stage 1 refines boxes it cannot move
    assert second.bbox_deltas.weight.grad is not None
    ffn_grad = first.ffn[0].weight.grad  # ... but it reads stage 0's proposal features
    assert ffn_grad is not None and ffn_grad.abs().sum() > 0


def test_losses_are_normalised_by_the_number_of_ground_truths() -> None:
    # The same image twice: twice the ground truths, the same per-object loss.
    model = build()
    model.backbone.eval()  # per-image BatchNorm statistics: the two batches see the same
    images, targets = batch()
    single, _ = model(images[:1], targets[:1])
    double, _ = model(images[:1].repeat(2, 1, 1, 1), targets[:1] * 2)
    for key, value in single.items():  # a sum instead of a mean would double them
        torch.testing.assert_close(double[key], value, rtol=1e-3, atol=1e-5)


def test_an_image_without_objects_trains() -> None:
    model = build()
    images, targets = batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses, stats = model(images, targets)
    sum(losses.values()).backward()
    assert stats["num_pos"].item() == 3
    assert all(torch.isfinite(v) for v in losses.values())
    nothing, _ = model(images[1:], targets[1:])  # no object in the whole batch
    assert nothing["loss_l1_s5"].item() == 0 and nothing["loss_cls_s5"].item() > 0
    sum(nothing.values()).backward()


# ------------------------------------------------------------------ correlation loss
def test_correlation_loss_at_every_stage_reaches_that_stages_classifier() -> None:
    model = build(**{"loss.corr.weight": 0.5})
    losses, stats = model(*batch())
    corr_keys = [k for k in losses if k.startswith("loss_corr")]
    assert corr_keys == [f"loss_corr_s{k}" for k in range(6)]
    for k in range(6):
        model.zero_grad()
        losses[f"loss_corr_s{k}"].backward(retain_graph=True)
        cls_grad = stage(model, k).class_logits.weight.grad
        assert cls_grad is not None and cls_grad.abs().sum() > 0
        # default grad_to="cls": the IoU is detached, the box branch learns nothing from it
        reg_grad = stage(model, k).bbox_deltas.weight.grad
        assert reg_grad is None or reg_grad.abs().sum() == 0
        assert math.isfinite(stats[f"corr_coefficient_s{k}"].item())
    assert stats["corr_skipped_pools"].item() == 0


def test_correlation_loss_value_is_weighted_one_minus_concordance_of_matched_pairs() -> None:
    model = build(**{"loss.corr.weight": 0.5, "model.num_stages": 1})
    images, targets = batch()
    losses, _ = model(images, targets)
    # recompute from the model's own outputs and matching (the same weights, same batch)
    whwh = model.image_whwh(images, targets)
    features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    (out,) = model.head(features, whwh)
    pairs = model.match(out, targets, whwh)
    scores, ious = pairs.scores_and_ious()
    expected = 0.5 * correlation_loss(scores, ious.detach(), "concordance")
    torch.testing.assert_close(losses["loss_corr_s0"], expected)


def test_correlation_gradient_can_go_to_the_regressor() -> None:
    model = build(**{"loss.corr.weight": 1.0, "loss.corr.grad_to": "reg", "model.num_stages": 1})
    losses, _ = model(*batch())
    losses["loss_corr_s0"].backward()
    reg_grad = stage(model, 0).bbox_deltas.weight.grad
    cls_grad = stage(model, 0).class_logits.weight.grad
    assert reg_grad is not None and reg_grad.abs().sum() > 0
    assert cls_grad is None or cls_grad.abs().sum() == 0


def test_image_pools_differ_from_the_batch_pool() -> None:
    losses = {}
    for pool in ("batch", "image"):
        model = build(**{"loss.corr.weight": 1.0, "loss.corr.pool": pool})
        losses[pool], stats = model(*batch())
        if pool == "image":  # image 1 has one object: a pool of one is skipped, per stage
            assert stats["corr_skipped_pools"].item() == 6
    assert losses["batch"]["loss_corr_s5"].item() != losses["image"]["loss_corr_s5"].item()


# --------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("loss.dc.enabled", True),
        ("assign.kind", "iac"),
        ("nms.kind", "soft"),
        ("nms.kind", "cl_balanced"),
        ("loss.corr.pool", "level"),
        ("model.fpn_channels", 12),  # not divisible by the 8 attention heads
    ],
)
def test_what_sparse_rcnn_cannot_do_is_a_config_error(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(**{key: value})


def test_head_widths_follow_the_fpn_channels() -> None:
    model = build(**{"model.fpn_channels": 32})
    first = stage(model, 0)
    assert first.ffn[0].out_features == 8 * 32  # the paper's 2048 for 256
    assert first.inst_interact.dynamic_dim == 32 // 4  # the paper's 64 for 256
    assert model.head.init_proposal_features.weight.shape == (100, 32)


# ------------------------------------------------------------------------- inference
def test_eval_returns_top_k_without_nms_and_the_matched_pairs() -> None:
    model = build(**{"nms.max_detections": 20})
    model.eval()
    images, targets = batch()
    outputs = model(images, targets)
    assert len(outputs) == 2
    for out, target in zip(outputs, targets):
        assert set(out) == {"boxes", "scores", "labels", "pos_scores", "pos_ious"}
        assert out["boxes"].shape == (20, 4) and out["scores"].shape == (20,)
        assert out["labels"].dtype == torch.int64
        assert bool(((out["labels"] >= 0) & (out["labels"] < NUM_CLASSES)).all())
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
        assert bool((out["boxes"] >= 0).all() and (out["boxes"] <= 64).all())
        # one matched proposal per ground truth, with its GT-class probability and IoU
        assert len(out["pos_scores"]) == len(out["pos_ious"]) == len(target["labels"])
        assert bool(((out["pos_ious"] >= 0) & (out["pos_ious"] <= 1)).all())
    # the scores are the best (proposal, class) sigmoid scores of the last stage
    whwh = model.image_whwh(images, targets)
    with torch.no_grad():
        features = model.backbone((images - model.pixel_mean) / model.pixel_std)
        last = model.head(features, whwh)[-1]
    best = last["cls_logits"].sigmoid().flatten(1).topk(20).values
    torch.testing.assert_close(torch.stack([o["scores"] for o in outputs]), best)
    assert "pos_scores" not in model(images)[0]  # no targets, no β_img pairs


def test_eval_keeps_every_candidate_when_max_detections_exceeds_them() -> None:
    model = build(**{"model.num_proposals": 5, "nms.max_detections": 100})
    model.eval()
    out = model(batch()[0])[0]
    assert len(out["scores"]) == 5 * NUM_CLASSES
