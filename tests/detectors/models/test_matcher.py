"""Hungarian set matching: hand-worked assignments and cost terms checked independently."""

from __future__ import annotations

import math

import pytest
import torch

from detectors.models.matcher import (
    INVALID_COST,
    HungarianMatcher,
    focal_class_cost,
    giou_cost,
    hungarian_assign,
    l1_box_cost,
)


def pairs(result: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[int, int]]:
    return list(zip(result[0].tolist(), result[1].tolist()))


# ------------------------------------------------------------------------ assignment
def test_optimal_assignment_beats_greedy_on_a_3x3() -> None:
    # Greedy (cheapest pair first) takes (0,0)=1, then (1,1)=4, then (2,2)=9: total 14.
    # Of the 6 permutations the anti-diagonal is the unique optimum: 3 + 4 + 3 = 10.
    cost = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0]])
    assert pairs(hungarian_assign(cost)) == [(0, 2), (1, 1), (2, 0)]


def test_rectangular_more_predictions_than_ground_truths() -> None:
    # g0 costs (2, 1, 4, 6) down the rows, g1 (3, 8, 4, 2.5): the best pair of distinct rows
    # is row 1 for g0 and row 3 for g1 (1 + 2.5 = 3.5; next best row 1 + row 0 = 4).
    cost = torch.tensor([[2.0, 3.0], [1.0, 8.0], [4.0, 4.0], [6.0, 2.5]])
    pred_idx, gt_idx = hungarian_assign(cost)
    assert pairs((pred_idx, gt_idx)) == [(1, 0), (3, 1)]
    assert pred_idx.dtype == gt_idx.dtype == torch.int64


def test_fewer_predictions_than_ground_truths_matches_each_prediction_once() -> None:
    cost = torch.tensor([[5.0, 1.0, 3.0]])
    assert pairs(hungarian_assign(cost)) == [(0, 1)]


def test_image_without_ground_truth_matches_nothing() -> None:
    pred_idx, gt_idx = hungarian_assign(torch.zeros(7, 0))
    assert pred_idx.shape == gt_idx.shape == (0,)


# ---------------------------------------------------------------------------- costs
def test_cost_terms_on_a_hand_worked_pair() -> None:
    # p = sigmoid(0) = 0.5: pos = 0.25 · 0.5² · ln 2, neg = 0.75 · 0.5² · ln 2.
    cls = focal_class_cost(torch.zeros(1, 3), torch.tensor([2]))
    assert cls.item() == pytest.approx((0.25 - 0.75) * 0.25 * math.log(2), abs=1e-6)
    pred, gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    # every coordinate is off by 5 px on a 100 x 100 image
    assert l1_box_cost(pred, gt, torch.tensor([100.0] * 4)).item() == pytest.approx(0.2)
    # IoU 25 / 175, enclosing box 225, union 175: GIoU = 1/7 - 50/225
    assert giou_cost(pred, gt).item() == pytest.approx(-(1 / 7 - 50 / 225), abs=1e-6)


def _independent_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    whwh: list[float],
) -> list[list[float]]:
    """2 · focal + 5 · L1 + 2 · (−GIoU), one pair at a time in plain Python floats."""
    alpha, gamma = 0.25, 2.0
    out = []
    for logit_row, b in zip(logits.tolist(), boxes.tolist()):
        row = []
        for label, g in zip(labels.tolist(), gt_boxes.tolist()):
            p = 1 / (1 + math.exp(-logit_row[label]))
            cls = alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -(
                math.log(1 - p + 1e-8)
            )
            l1 = sum(abs(bi / s - gi / s) for bi, gi, s in zip(b, g, whwh))
            iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
            ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
            hull = (max(b[2], g[2]) - min(b[0], g[0])) * (max(b[3], g[3]) - min(b[1], g[1]))
            giou = iw * ih / union - (hull - union) / hull
            row.append(2 * cls + 5 * l1 - 2 * giou)
        out.append(row)
    return out


def test_matching_cost_equals_an_independent_computation() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=gen) * 2
    xy = torch.rand(5, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(5, 2, generator=gen) * 40], dim=1)
    gt_xy = torch.rand(3, 2, generator=gen) * 60
    gt_boxes = torch.cat([gt_xy, gt_xy + 5 + torch.rand(3, 2, generator=gen) * 40], dim=1)
    labels = torch.tensor([3, 0, 3])
    whwh = [120.0, 80.0, 120.0, 80.0]
    cost = HungarianMatcher().cost(logits, boxes, labels, gt_boxes, torch.tensor(whwh))
    expected = torch.tensor(_independent_cost(logits, boxes, labels, gt_boxes, whwh))
    assert cost.shape == (5, 3)
    torch.testing.assert_close(cost, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------ the batch
def test_batch_matching_recovers_a_permutation_and_handles_an_empty_image() -> None:
    gt_boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 5.0, 90.0, 30.0], [5, 60, 30, 95]])
    gt_labels = torch.tensor([1, 0, 1])
    # Image 0: proposal 4 sits on g0, 1 on g1, 2 on g2 (with their classes); 0 and 3 are off.
    boxes = torch.zeros(2, 5, 4)
    boxes[0] = torch.tensor(
        [[0.0, 0.0, 5.0, 5.0], [51, 6, 89, 31], [6, 61, 29, 94], [70, 70, 99, 99], [11, 9, 41, 40]]
    )
    boxes[1] = boxes[0]
    logits = torch.full((2, 5, 2), -4.0)
    logits[0, 4, 1] = logits[0, 1, 0] = logits[0, 2, 1] = 3.0
    targets = [
        {"boxes": gt_boxes, "labels": gt_labels},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    whwh = torch.tensor([[100.0, 100.0, 100.0, 100.0], [64.0, 48.0, 64.0, 48.0]])
    matches = HungarianMatcher()(logits, boxes, targets, whwh)
    assert pairs(matches[0]) == [(1, 1), (2, 2), (4, 0)]
    assert matches[1][0].numel() == matches[1][1].numel() == 0


def test_classification_cost_decides_between_equal_boxes() -> None:
    # Two proposals on the same box; only the one scoring the ground truth's class wins.
    boxes = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [10.0, 10.0, 30.0, 30.0]]])
    logits = torch.tensor([[[2.0, -2.0], [-2.0, 2.0]]])
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    (match,) = HungarianMatcher()(logits, boxes, [target], torch.tensor([[64.0] * 4]))
    assert pairs(match) == [(1, 0)]


def test_non_finite_predictions_are_never_preferred() -> None:
    boxes = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [12.0, 12.0, 30.0, 30.0]]])
    logits = torch.tensor([[[float("nan")], [0.0]]])  # the better box has a NaN score
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    matcher = HungarianMatcher()
    cost = matcher.cost(logits[0], boxes[0], target["labels"], target["boxes"], torch.ones(4))
    assert cost[0, 0].item() == INVALID_COST and math.isfinite(cost[1, 0].item())
    (match,) = matcher(logits, boxes, [target], torch.tensor([[64.0] * 4]))
    assert pairs(match) == [(1, 0)]


def test_all_zero_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cls_weight=0, l1_weight=0, giou_weight=0)
