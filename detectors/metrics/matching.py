"""COCO's greedy detection-to-ground-truth matching, vectorized over image-category pairs.

pycocotools (``COCOeval.evaluateImg``) matches, separately for each image, category, area range
and IoU threshold ``t``: detections in decreasing score order (the top ``max_dets``), each to
the ground truth of highest IoU that is ``>= t`` and still free (crowd boxes never get used
up), preferring boxes that are not ignored; on equal IoU the later box wins. A ground truth is
ignored when it is a crowd or its ``area`` lies outside the range; a detection is ignored when
it matched an ignored box, or matched nothing and its own area lies outside the range.

The dependency between detections runs only inside one image-category pair, so here all pairs
advance together: step ``r`` settles the ``r``-th detection of every pair at every
(threshold, area range) at once, touching only the few (detection, box) pairs whose IoU reaches
the lowest threshold. The result is the same as pycocotools', bit for bit (IoU included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.metrics.coco_io import Detections, GroundTruth

# pycocotools' defaults (Params.setDetParams); linspace, not arange, as there.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
IOU_THRESHOLDS.setflags(write=False)
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
MAX_DETS = 100

# Pair blocks for the IoU computation stay below this many (detection, box) pairs.
_PAIR_CHUNK = 1 << 22


def coco_box_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of row-aligned pairs of xywh boxes, [P, 4] x [P, 4] -> [P], as pycocotools does it.

    The same float64 operations in the same order as ``maskApi.c:bbIou``, so thresholds compare
    identically. Against a crowd box the union is the detection's own area.
    """
    dx, dy, dw, dh = det_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    iou = np.zeros(len(inter))
    np.divide(inter, union, out=iou, where=overlap)
    return iou


def group_pairs(det_group: np.ndarray, gt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair sharing a group, [P] and [P] row indices.

    ``gt_group`` must be nondecreasing. Pairs come ordered by detection row, then ground-truth
    row.
    """
    first = np.searchsorted(gt_group, det_group, "left")  # [D]
    count = np.searchsorted(gt_group, det_group, "right") - first  # [D]
    det_rows = np.repeat(np.arange(len(det_group)), count)
    offset = np.arange(len(det_rows)) - np.repeat(np.cumsum(count) - count, count)
    return det_rows, np.repeat(first, count) + offset


@dataclass(frozen=True)
class Candidates:
    """(detection, ground truth) pairs of the same image and category with a high enough IoU."""

    det: np.ndarray  # [C] int64 detection row, nondecreasing
    gt: np.ndarray  # [C] int64 ground-truth row, increasing within a detection
    iou: np.ndarray  # [C] float64


def find_candidates(
    dets: Detections,
    gt: GroundTruth,
    iou_floor: float,
    *,
    strict: bool = False,
    crowd_iou: bool = True,
) -> Candidates:
    """The pairs of the same image and category whose IoU is ``>= iou_floor`` (``>`` if strict).

    With ``crowd_iou`` (COCO) a crowd box's IoU is intersection over the detection's area;
    without it every box gets the plain IoU. Computed in blocks so memory stays bounded
    however many boxes an image holds.
    """
    crowd = gt.crowd if crowd_iou else np.zeros_like(gt.crowd)
    det_group = dets.group(gt.num_categories)
    gt_group = gt.group
    count = np.searchsorted(gt_group, det_group, "right") - np.searchsorted(gt_group, det_group)
    pairs_before = np.r_[0, np.cumsum(count)]  # [D+1]
    parts_det, parts_gt, parts_iou = [], [], []
    start = 0
    while start < len(det_group):
        end = int(np.searchsorted(pairs_before, pairs_before[start] + _PAIR_CHUNK, "right")) - 1
        end = max(end, start + 1)
        det_rows, gt_rows = group_pairs(det_group[start:end], gt_group)
        det_rows += start
        iou = coco_box_iou(dets.boxes[det_rows], gt.boxes[gt_rows], crowd[gt_rows])
        keep = iou > iou_floor if strict else iou >= iou_floor
        parts_det.append(det_rows[keep])
        parts_gt.append(gt_rows[keep])
        parts_iou.append(iou[keep])
        start = end
    if not parts_det:
        empty = np.zeros(0, dtype=np.int64)
        return Candidates(det=empty, gt=empty, iou=np.zeros(0))
    return Candidates(
        det=np.concatenate(parts_det), gt=np.concatenate(parts_gt), iou=np.concatenate(parts_iou)
    )


@dataclass(frozen=True)
class MatchResult:
    """Per-detection outcome of COCO matching at T thresholds and A area ranges.

    Rows of the [T, A, D] arrays follow ``Detections`` rows; detections beyond ``max_dets`` in
    their image-category pair have ``kept`` False and take part in nothing.
    """

    kept: np.ndarray  # [D] bool, among the top max_dets of its image and category
    matched: np.ndarray  # [T, A, D] bool, matched a ground truth (pycocotools: dtm > 0)
    ignored: np.ndarray  # [T, A, D] bool, pycocotools' dtIgnore
    iou: np.ndarray  # [D] float64, IoU of the match at thresholds[0], area range 0 (else 0)
    gt_row: np.ndarray  # [D] int64, the ground-truth row of that match (-1 if none)

    @property
    def true_positive(self) -> np.ndarray:
        """[T, A, D] bool: matched and not ignored (pycocotools' ``tps``)."""
        return self.matched & ~self.ignored

    @property
    def false_positive(self) -> np.ndarray:
        """[T, A, D] bool: kept, unmatched and not ignored (pycocotools' ``fps``)."""
        return self.kept & ~self.matched & ~self.ignored

    def first_area(self) -> MatchResult:
        """The same matching restricted to its first area range (``[T, 1, D]`` arrays)."""
        return MatchResult(
            kept=self.kept,
            matched=self.matched[:, :1],
            ignored=self.ignored[:, :1],
            iou=self.iou,
            gt_row=self.gt_row,
        )


def rank_in_group(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    """[D] 0-based position of each detection within its group by decreasing score.

    Ties keep input order (pycocotools' mergesort on ``-score``).
    """
    order = np.lexsort((-scores, group))
    sorted_group = group[order]
    is_first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    first = np.maximum.accumulate(np.where(is_first, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank


def match_detections(
    dets: Detections,
    gt: GroundTruth,
    candidates: Candidates,
    scores: np.ndarray,
    *,
    iou_thresholds: np.ndarray,
    area_ranges: list[tuple[float, float]],
    max_dets: int = MAX_DETS,
) -> MatchResult:
    """Greedy COCO matching of ``dets`` ranked by ``scores`` [D], as ``COCOeval.evaluateImg``.

    ``candidates`` must hold every pair with IoU ``>= min(iou_thresholds)`` (see
    ``find_candidates``); ``scores`` may differ from ``dets.scores`` (the AP bounds re-rank).
    """
    num_thr, num_area, num_det = len(iou_thresholds), len(area_ranges), len(dets)
    num_rows = num_thr * num_area  # one row per (threshold, area range), threshold-major
    rank = rank_in_group(scores, dets.group(gt.num_categories))
    kept = rank < max_dets

    low = np.asarray([lo for lo, _ in area_ranges])[:, None]
    high = np.asarray([hi for _, hi in area_ranges])[:, None]
    gt_ignored = gt.crowd[None, :] | (gt.areas[None, :] < low) | (gt.areas[None, :] > high)
    row_gt_ignored = np.tile(gt_ignored, (num_thr, 1))  # [TA, G]
    row_threshold = np.repeat(np.minimum(iou_thresholds, 1 - 1e-10), num_area)[:, None]

    matched = np.zeros((num_rows, num_det), dtype=bool)
    ignored = np.zeros((num_rows, num_det), dtype=bool)
    gt_taken = np.zeros((num_rows, len(gt.crowd)), dtype=bool)
    match_iou = np.zeros(num_det)
    match_gt = np.full(num_det, -1, dtype=np.int64)

    use = kept[candidates.det]
    cand_rank = rank[candidates.det[use]]
    order = np.argsort(cand_rank, kind="stable")  # by rank, then detection, then box
    cand_det = candidates.det[use][order]
    cand_gt = candidates.gt[use][order]
    cand_iou = candidates.iou[use][order]
    rank_bounds = np.searchsorted(cand_rank[order], np.arange(max_dets + 1))
    for r in range(max_dets):
        lo, hi = rank_bounds[r], rank_bounds[r + 1]
        if lo == hi:
            continue
        det_r, gt_r, iou_r = cand_det[lo:hi], cand_gt[lo:hi], cand_iou[lo:hi]
        seg_start = np.flatnonzero(np.r_[True, det_r[1:] != det_r[:-1]])  # [S]
        seg_of = np.cumsum(np.r_[False, det_r[1:] != det_r[:-1]])  # [n]
        free = ~gt_taken[:, gt_r] | gt.crowd[gt_r]  # [TA, n]
        valid = free & (iou_r >= row_threshold)
        regular = ~row_gt_ignored[:, gt_r]
        # A detection takes an ignored box only when no regular box qualifies.
        has_regular = np.logical_or.reduceat(valid & regular, seg_start, axis=1)  # [TA, S]
        tier = valid & (regular == has_regular[:, seg_of])
        best = np.maximum.reduceat(np.where(tier, iou_r, -1.0), seg_start, axis=1)
        winner = tier & (iou_r == best[:, seg_of])
        position = np.where(winner, np.arange(len(gt_r)), -1)
        pick = np.maximum.reduceat(position, seg_start, axis=1)  # [TA, S], last best box
        row, seg = np.nonzero(pick >= 0)
        chosen = pick[row, seg]
        det_hit, gt_hit = det_r[chosen], gt_r[chosen]
        gt_taken[row, gt_hit] = True
        matched[row, det_hit] = True
        ignored[row, det_hit] = row_gt_ignored[row, gt_hit]
        first_row = row == 0
        match_iou[det_hit[first_row]] = iou_r[chosen[first_row]]
        match_gt[det_hit[first_row]] = gt_hit[first_row]

    areas = dets.areas
    det_outside = (areas[None, :] < low) | (areas[None, :] > high)  # [A, D]
    matched = matched.reshape(num_thr, num_area, num_det) & kept
    ignored = ignored.reshape(num_thr, num_area, num_det) | (~matched & det_outside[None])
    return MatchResult(
        kept=kept, matched=matched, ignored=ignored & kept, iou=match_iou, gt_row=match_gt
    )
