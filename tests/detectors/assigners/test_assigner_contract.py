"""Every entry of ``ASSIGNERS`` honours the :class:`Assigner` contract on the same cases."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

import detectors.assigners
import detectors.postprocess
from detectors.assigners import ASSIGNERS, IGNORED, NEGATIVE, POSITIVE, Assigner, AssignResult
from detectors.box_ops import box_iou

NUM_CLASSES = 3


def make(name: str) -> Assigner:
    return ASSIGNERS[name]()  # defaults must be usable


def check_contract(result: AssignResult, anchors: Tensor, gt_boxes: Tensor) -> None:
    num_anchors = anchors.shape[0]
    assert isinstance(result, AssignResult)
    assert result.labels.shape == result.matched_gt.shape == (num_anchors,)
    assert result.labels.dtype == result.matched_gt.dtype == torch.int64
    assert set(result.labels.tolist()) <= {POSITIVE, NEGATIVE, IGNORED}
    positive = result.labels == POSITIVE
    assert torch.equal(result.matched_gt >= 0, positive)  # -1 exactly where not positive
    assert all(m < gt_boxes.shape[0] for m in result.matched_gt.tolist())
    if positive.any():  # a positive always overlaps its ground truth
        iou = box_iou(anchors[positive], gt_boxes[result.matched_gt[positive]])
        assert bool((iou.diagonal() > 0).all())
    assert isinstance(result.num_recalled, int)
    assert 0 <= result.num_recalled <= result.num_pos


def run(assigner: Assigner, anchors: Tensor, gt_boxes: Tensor, probs: Tensor) -> AssignResult:
    """Assign with predicted boxes equal to the anchors (an untrained regressor)."""
    gt_labels = torch.arange(gt_boxes.shape[0]) % NUM_CLASSES
    result = assigner.assign(anchors, gt_boxes, gt_labels, probs, iteration=10, pred_boxes=anchors)
    check_contract(result, anchors, gt_boxes)
    again = assigner.assign(anchors, gt_boxes, gt_labels, probs, iteration=10, pred_boxes=anchors)
    assert torch.equal(result.labels, again.labels)  # deterministic
    assert torch.equal(result.matched_gt, again.matched_gt)
    return result


def test_table_lists_the_implementations() -> None:
    assert set(ASSIGNERS) == {"max_iou", "iac", "atss", "fcos", "fovea", "paa"}
    assert all(issubclass(cls, Assigner) for cls in ASSIGNERS.values())


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_constructor_is_keyword_only(name: str) -> None:
    with pytest.raises(TypeError):
        ASSIGNERS[name](0.5)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_no_ground_truth_makes_every_anchor_negative(name: str) -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    result = run(make(name), anchors, torch.zeros(0, 4), torch.ones(2, NUM_CLASSES))
    assert result.labels.tolist() == [NEGATIVE, NEGATIVE]
    assert result.matched_gt.tolist() == [-1, -1]


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_no_anchor(name: str) -> None:
    result = run(
        make(name), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.ones(0, 3)
    )
    assert result.labels.numel() == 0


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_assigners_that_ignore_probabilities_accept_none(name: str) -> None:
    """Detectors pass ``cls_probs=None`` when ``uses_cls_probs`` is False (no sigmoid)."""
    assigner = make(name)
    assert assigner.uses_cls_probs == (name in {"iac", "paa"})
    if assigner.uses_cls_probs:
        return
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=gen) * 60
    anchors = torch.cat([xy, xy + 8 + torch.rand(40, 2, generator=gen) * 24], dim=1)
    gt_boxes = torch.tensor([[5.0, 5.0, 40.0, 30.0], [20.0, 25.0, 70.0, 80.0]])
    gt_labels = torch.tensor([0, 1])
    probs = torch.rand(40, NUM_CLASSES, generator=gen)
    with_probs = assigner.assign(anchors, gt_boxes, gt_labels, probs)
    without = assigner.assign(anchors, gt_boxes, gt_labels, None)
    assert torch.equal(with_probs.labels, without.labels)
    assert torch.equal(with_probs.matched_gt, without.matched_gt)


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_assigners_that_ignore_predictions_accept_none(name: str) -> None:
    """Detectors pass ``pred_boxes=None`` when ``uses_predictions`` is False; those that
    read them reject None, and nobody else looks at them."""
    assigner = make(name)
    assert assigner.uses_predictions == (name == "paa")
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=gen) * 60
    anchors = torch.cat([xy, xy + 8 + torch.rand(40, 2, generator=gen) * 24], dim=1)
    gt_boxes = torch.tensor([[5.0, 5.0, 40.0, 30.0], [20.0, 25.0, 70.0, 80.0]])
    gt_labels = torch.tensor([0, 1])
    probs = torch.rand(40, NUM_CLASSES, generator=gen)
    shifted = anchors + torch.randn(40, 4, generator=gen) * 5
    with_boxes = assigner.assign(anchors, gt_boxes, gt_labels, probs, pred_boxes=shifted)
    check_contract(with_boxes, anchors, gt_boxes)
    if assigner.uses_predictions:
        with pytest.raises(ValueError, match="pred_boxes"):
            assigner.assign(anchors, gt_boxes, gt_labels, probs, pred_boxes=None)
        return
    without = assigner.assign(anchors, gt_boxes, gt_labels, probs, pred_boxes=None)
    assert torch.equal(with_boxes.labels, without.labels)
    assert torch.equal(with_boxes.matched_gt, without.matched_gt)


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_single_anchor_on_single_gt(name: str) -> None:
    box = torch.tensor([[3.0, 4.0, 13.0, 24.0]])
    result = run(make(name), box, box, torch.zeros(1, NUM_CLASSES))
    assert result.labels.tolist() == [POSITIVE]
    assert result.matched_gt.tolist() == [0]
    assert result.num_recalled == 0


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_zero_area_anchors_are_never_positive(name: str) -> None:
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[5.0, 5.0, 5.0, 5.0], [2.0, 2.0, 8.0, 2.0], [0.0, 0.0, 0.0, 10.0]])
    result = run(make(name), anchors, gt_boxes, torch.ones(3, NUM_CLASSES))  # confident
    assert result.labels.tolist() == [NEGATIVE] * 3


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_zero_area_gt_recruits_nobody(name: str) -> None:
    gt_boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    result = run(make(name), anchors, gt_boxes, torch.ones(2, NUM_CLASSES))
    assert result.labels.tolist() == [NEGATIVE, POSITIVE]
    assert result.matched_gt.tolist() == [-1, 1]


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_identical_anchors_all_match_the_same_gt(name: str) -> None:
    gt_boxes = torch.tensor([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(5, 1)
    result = run(make(name), anchors, gt_boxes, torch.full((5, NUM_CLASSES), 0.5))
    assert result.labels.tolist() == [POSITIVE] * 5
    assert result.matched_gt.tolist() == [1] * 5


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_far_anchors_stay_negative_however_confident(name: str) -> None:
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[100.0, 100.0, 110.0, 110.0], [11.0, 0.0, 21.0, 10.0]])
    result = run(make(name), anchors, gt_boxes, torch.ones(2, NUM_CLASSES))
    assert result.labels.tolist() == [NEGATIVE, NEGATIVE]


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_accepts_anchors_per_level(name: str) -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])
    gt_labels = torch.tensor([0])
    result = make(name).assign(
        anchors,
        anchors[:1],
        gt_labels,
        torch.zeros(2, 1),
        num_anchors_per_level=[1, 1],
        pred_boxes=anchors,
    )
    check_contract(result, anchors, anchors[:1])
    assert result.labels.tolist() == [POSITIVE, NEGATIVE]  # IoU 1 and 100/400


@pytest.mark.parametrize("package", [detectors.assigners, detectors.postprocess])
def test_slots_import_neither_ray_nor_mlflow(package: ModuleType) -> None:
    assert package.__file__ is not None
    imported = set()
    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "torch" in imported  # the scan sees imports at all
    assert not imported & {"ray", "mlflow"}
