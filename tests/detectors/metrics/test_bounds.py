from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectors.metrics import ap_bounds, coco_ap, coco_from_dict
from detectors.metrics.bounds import rescore_true_positives


def _case(tp_scores: list[float]) -> tuple[COCO, list[dict]]:
    """Three boxes hit at IoU 0.9, 0.8, 0.7 with ``tp_scores``, and a miss scored 0.25."""
    dataset = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
            {"image_id": 1, "category_id": 1, "bbox": [200, 0, 100, 100]},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100]},
        ],
    }
    boxes = [(1, [0, 0, 100, 90]), (1, [200, 0, 100, 80]), (2, [0, 0, 100, 70])]
    dets = [
        {"image_id": image, "category_id": 1, "bbox": box, "score": score}
        for (image, box), score in zip(boxes, tp_scores)
    ]
    dets.append({"image_id": 2, "category_id": 1, "bbox": [500, 500, 50, 50], "score": 0.25})
    return coco_from_dict(dataset), dets


def test_scores_already_following_iou_are_the_upper_bound() -> None:
    coco_gt, dets = _case([0.3, 0.2, 0.1])
    ap, bounds = coco_ap(coco_gt, dets), ap_bounds(coco_gt, dets)
    assert bounds["AP_upper"] == ap["AP"] and bounds["AP75_upper"] == ap["AP75"]
    # At IoU .75 the order is TP FP TP FP -> (34 * 1 + 33 * 2/3) / 101 over recall points;
    # reversed it is FP FP TP TP -> 67 * 1/2 / 101.
    assert ap["AP75"] == pytest.approx(56 / 101)
    assert bounds["AP75_lower"] == pytest.approx(33.5 / 101)
    assert bounds["AP_lower"] < ap["AP"]


def test_scores_reversing_iou_are_the_lower_bound() -> None:
    coco_gt, dets = _case([0.1, 0.2, 0.3])
    ap, bounds = coco_ap(coco_gt, dets), ap_bounds(coco_gt, dets)
    assert bounds["AP_lower"] == ap["AP"] and bounds["AP75_lower"] == ap["AP75"]
    assert bounds["AP75_upper"] == pytest.approx(56 / 101)
    assert bounds["AP_upper"] > ap["AP"]


def test_rescoring_permutes_within_each_class_only() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8])
    category = np.array([0, 0, 0, 1, 1, 1])
    tp_rows = np.array([0, 1, 2, 4, 5])  # row 3 is a false positive
    tp_ious = np.array([0.6, 0.9, 0.7, 0.8, 0.95])
    upper = rescore_true_positives(scores, tp_rows, tp_ious, category, follow_iou=True)
    assert upper.tolist() == [0.1, 0.9, 0.5, 0.7, 0.3, 0.8]
    lower = rescore_true_positives(scores, tp_rows, tp_ious, category, follow_iou=False)
    assert lower.tolist() == [0.9, 0.1, 0.5, 0.7, 0.8, 0.3]


def test_bounds_bracket_ap_when_boxes_do_not_compete() -> None:
    rng = np.random.default_rng(0)
    annotations, dets = [], []
    for image in range(1, 11):
        for slot in range(8):  # a grid: no detection can reach a neighbour's box
            x, y = 120.0 * (slot % 4), 120.0 * (slot // 4)
            cat = int(rng.integers(1, 3))
            annotations.append({"image_id": image, "category_id": cat, "bbox": [x, y, 100, 100]})
            shrink = float(rng.uniform(0.5, 1.0))
            dets.append(
                {
                    "image_id": image,
                    "category_id": cat,
                    "bbox": [x, y, 100, 100 * shrink],
                    "score": float(rng.random()),
                }
            )
            dets.append(
                {
                    "image_id": image,
                    "category_id": cat,
                    "bbox": [x + 60, y + 60, 30, 30],
                    "score": float(rng.random()),
                }
            )
    dataset = {
        "images": [{"id": i} for i in range(1, 11)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": annotations,
    }
    coco_gt = coco_from_dict(dataset)
    ap, bounds = coco_ap(coco_gt, dets), ap_bounds(coco_gt, dets)
    assert bounds["AP_lower"] < ap["AP"] < bounds["AP_upper"]
    assert bounds["AP75_lower"] < ap["AP75"] < bounds["AP75_upper"]
    # the set of true positives at 0.5 cannot change, so neither can AP50
    assert bounds["AP50_lower"] == bounds["AP50_upper"] == ap["AP50"]


def _bounds_from_fixed_matches(
    evaluator: COCOeval, true_pos: list[tuple[int, int, float, float]], follow_iou: bool
) -> list[float]:
    """AP at each IoU threshold, by hand from pycocotools' own per-image matches
    (``evalImgs``, all areas), after the true positives at 0.5 of each category traded
    places in pycocotools' ranking (``accumulate``'s mergesort) so that their order follows
    their IoU (``follow_iou``) or its reverse; every detection keeps its match."""
    params = evaluator.params
    recall_points = np.linspace(0.0, 1.0, 101)
    per_threshold: list[list[float]] = [[] for _ in params.iouThrs]
    for cat in params.catIds:
        evals = [
            e
            for e in evaluator.evalImgs
            if e is not None and e["category_id"] == cat and e["aRng"] == params.areaRng[0]
        ]
        num_gt = sum(int(np.count_nonzero(e["gtIgnore"] == 0)) for e in evals)
        if not evals or num_gt == 0:
            continue
        ids = np.concatenate([e["dtIds"] for e in evals]).astype(int)
        scores = np.concatenate([e["dtScores"] for e in evals])
        place = np.empty(len(ids), dtype=int)
        place[np.argsort(-scores, kind="mergesort")] = np.arange(len(ids))
        mine = {i + 1: iou for i, c, iou, _ in true_pos if c == cat}  # loadRes ids from 1
        tp_at = [k for k, dt_id in enumerate(ids) if dt_id in mine]
        sign = -1.0 if follow_iou else 1.0
        by_iou = sorted(tp_at, key=lambda k: (sign * mine[ids[k]], place[k]))
        place[by_iou] = sorted(place[tp_at])
        order = np.argsort(place)
        matched = np.concatenate([e["dtMatches"] for e in evals], axis=1)[:, order]
        ignored = np.concatenate([e["dtIgnore"] for e in evals], axis=1)[:, order]
        for t in range(len(params.iouThrs)):
            tp = np.cumsum((matched[t] > 0) & ~ignored[t])
            fp = np.cumsum((matched[t] == 0) & ~ignored[t])
            recall = tp / num_gt
            precision = tp / np.maximum(tp + fp, np.spacing(1))
            for i in range(len(precision) - 1, 0, -1):  # the precision envelope
                precision[i - 1] = max(precision[i - 1], precision[i])
            at = np.searchsorted(recall, recall_points, side="left")
            values = [precision[i] if i < len(precision) else 0.0 for i in at]
            per_threshold[t].append(float(np.mean(values)))
    return [float(np.mean(v)) if v else -1.0 for v in per_threshold]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_trading_places_with_the_original_matches_by_hand(
    make_dataset: Callable[..., dict[str, Any]],
    make_detections: Callable[..., list[dict]],
    pycocotools_eval: Callable[[COCO, list[dict]], COCOeval],
    reference_true_positives: Callable[[COCOeval], list[tuple[int, int, float, float]]],
    seed: int,
) -> None:
    """Duplicates and crowds included: every detection keeps the match pycocotools gave it."""
    dataset = make_dataset(seed, crowd_rate=0.1)
    dets = make_detections(dataset, seed, duplicate_rate=0.5, score_noise=0.2)
    evaluator = pycocotools_eval(coco_from_dict(dataset), dets)
    true_pos = reference_true_positives(evaluator)
    expected = {}
    for suffix, follow_iou in (("upper", True), ("lower", False)):
        aps = _bounds_from_fixed_matches(evaluator, true_pos, follow_iou)
        expected |= {
            f"AP_{suffix}": float(np.mean(aps)),
            f"AP50_{suffix}": aps[0],
            f"AP75_{suffix}": aps[5],
        }
    ours = ap_bounds(coco_from_dict(dataset), dets)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours["AP_upper"] - ours["AP_lower"] > 0.05


@pytest.mark.parametrize("seed", range(6))
def test_bounds_bound_at_every_threshold_with_duplicates(
    make_dataset: Callable[..., dict[str, Any]],
    make_detections: Callable[..., list[dict]],
    seed: int,
) -> None:
    """The definition's promise, where re-matching broke it: duplicates that could take over
    a match after re-ranking (the "lower" bound once came out above AP50 on real data)."""
    dataset = make_dataset(seed, crowd_rate=0.05)
    dets = make_detections(dataset, seed, duplicate_rate=0.8, score_noise=0.3)
    coco_gt = coco_from_dict(dataset)
    ap, bounds = coco_ap(coco_gt, dets), ap_bounds(coco_gt, dets)
    for key in ("AP", "AP50", "AP75"):
        assert bounds[f"{key}_lower"] <= ap[key] + 1e-12 <= bounds[f"{key}_upper"] + 2e-12, key
    # The true positives at 0.5 only trade places among themselves: AP50 cannot move.
    assert bounds["AP50_lower"] == pytest.approx(ap["AP50"], abs=1e-12)
    assert bounds["AP50_upper"] == pytest.approx(ap["AP50"], abs=1e-12)


def test_no_detections() -> None:
    coco_gt, _ = _case([])
    assert ap_bounds(coco_gt, []) == {
        f"{key}_{suffix}": 0.0 for suffix in ("upper", "lower") for key in ("AP", "AP50", "AP75")
    }
