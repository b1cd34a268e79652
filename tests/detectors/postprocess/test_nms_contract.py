"""Every entry of ``NMS_METHODS`` honours the :class:`NMS` contract on the same cases."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from nms_refs import clustered_detections
from torch import Tensor

from detectors.postprocess import NMS, NMS_METHODS


def make(name: str) -> NMS:
    factory: Callable[..., NMS] = NMS_METHODS[name]  # every entry takes iou_threshold
    return factory(iou_threshold=0.5)


def run(nms: NMS, boxes: Tensor, scores: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    keep, kept_scores = nms(boxes, scores, classes)
    assert keep.dtype == torch.int64
    assert kept_scores.dtype == scores.dtype
    assert keep.dim() == kept_scores.dim() == 1
    assert keep.shape == kept_scores.shape
    assert keep.unique().numel() == keep.numel()  # no index twice
    assert bool(((keep >= 0) & (keep < scores.numel())).all())
    assert bool(torch.isfinite(kept_scores).all())
    assert bool((kept_scores[:-1] >= kept_scores[1:]).all())  # sorted, decreasing
    assert bool((kept_scores <= scores[keep]).all())  # a score never grows
    again = nms(boxes, scores, classes)
    assert torch.equal(keep, again[0])  # deterministic
    return keep, kept_scores


def test_table_lists_the_implementations() -> None:
    assert {"greedy", "soft", "cl_balanced"} <= set(NMS_METHODS)
    assert all(issubclass(cls, NMS) for cls in NMS_METHODS.values())


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_empty_input(name: str) -> None:
    keep, kept_scores = run(
        make(name), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    )
    assert keep.shape == kept_scores.shape == (0,)


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_single_box(name: str) -> None:
    keep, kept_scores = run(
        make(name), torch.tensor([[1.0, 2.0, 3.0, 5.0]]), torch.tensor([0.7]), torch.tensor([4])
    )
    assert keep.tolist() == [0]
    assert kept_scores.tolist() == pytest.approx([0.7])


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_zero_area_boxes_overlap_nothing(name: str) -> None:
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0]] * 3 + [[0.0, 2.0, 9.0, 2.0]])
    scores = torch.tensor([0.3, 0.9, 0.6, 0.5])
    keep, kept_scores = run(make(name), boxes, scores, torch.zeros(4, dtype=torch.int64))
    assert keep.tolist() == [1, 2, 3, 0]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.6, 0.5, 0.3])


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_identical_boxes_keep_the_best_first(name: str) -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0]] * 4)
    scores = torch.tensor([0.2, 0.8, 0.5, 0.4])
    keep, kept_scores = run(make(name), boxes, scores, torch.zeros(4, dtype=torch.int64))
    assert keep[0] == 1
    assert kept_scores[0] == pytest.approx(0.8)
    if name != "soft":  # suppressing methods keep exactly one of identical boxes
        assert keep.tolist() == [1]


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_identical_boxes_of_different_classes_all_survive(name: str) -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0]] * 3)
    scores = torch.tensor([0.2, 0.8, 0.5], dtype=torch.float64)
    keep, kept_scores = run(make(name), boxes, scores, torch.tensor([0, 1, 2]))
    assert keep.tolist() == [1, 2, 0]
    assert kept_scores.tolist() == pytest.approx([0.8, 0.5, 0.2])


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_mismatched_shapes_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="boxes"):
        make(name)(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_inputs_are_not_modified(name: str) -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.3])
    classes = torch.zeros(3, dtype=torch.int64)
    copies = boxes.clone(), scores.clone(), classes.clone()
    run(make(name), boxes, scores, classes)
    assert all(torch.equal(a, b) for a, b in zip((boxes, scores, classes), copies))


@pytest.mark.cuda
@pytest.mark.parametrize("num_boxes", [400, 6000])  # 6000: CL-B's bands, Soft-NMS's runs
@pytest.mark.parametrize("name", sorted(NMS_METHODS))
def test_cuda_matches_cpu(name: str, num_boxes: int) -> None:
    """The same detections on the device keep the same boxes with the same scores."""
    boxes, scores, classes = clustered_detections(5, num_boxes, 7, num_objects=40)
    keep, kept_scores = run(make(name), boxes, scores, classes)
    on_device = run(make(name), boxes.cuda(), scores.cuda(), classes.cuda())
    assert on_device[0].is_cuda and on_device[1].is_cuda
    assert on_device[0].cpu().tolist() == keep.tolist()
    torch.testing.assert_close(on_device[1].cpu(), kept_scores, rtol=1e-9, atol=1e-12)
    assert 0 < keep.numel() < num_boxes  # something was suppressed (or decayed away)
