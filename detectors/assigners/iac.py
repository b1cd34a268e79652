"""IoU-classification-aware (IAC) assignment (SPEC §2.3).

Max-IoU misses anchors that sit well inside an object but have a low IoU with it (a small
anchor in a large box, or a large anchor around a small one). IAC recalls such an anchor when
the head already predicts the object's class there: it scores every (anchor, gt) pair with

    S = p^α · IoMin^(1−α)          (form="geometric", default)
    S = α·p + (1−α)·IoMin          (form="arithmetic")

where ``p`` is the anchor's predicted probability of the ground truth's class and
``IoMin = area(a ∩ g) / min(area(a), area(g))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from detectors.assigners.base import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    Assigner,
    AssignResult,
    all_negative,
)
from detectors.assigners.max_iou import check_thresholds, low_quality_positives, max_iou_labels
from detectors.box_ops import box_iou_iomin

IACForm = Literal["geometric", "arithmetic"]
IAC_FORMS: tuple[IACForm, ...] = ("geometric", "arithmetic")


def _check_iac_args(alpha: float, score_thr: float, form: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if form not in IAC_FORMS:
        raise ValueError(f"form must be one of {IAC_FORMS}, got {form!r}")
    if score_thr <= 0.0:
        # S is 0 wherever p or IoMin is 0; a threshold <= 0 would recall such anchors.
        raise ValueError(f"score_thr must be > 0, got {score_thr}")


def iac_scores(iomin: Tensor, probs: Tensor, *, alpha: float, form: IACForm) -> Tensor:
    """The IAC score S for ``iomin`` [A, G] and ``probs`` [A, G] (p of each gt's class).

    The geometric form is evaluated as ``exp(α·log p + (1−α)·log IoMin)`` (several times
    faster than two ``pow``), with p and IoMin floored at the smallest normal float so that
    α ∈ {0, 1} stays exact and a zero factor gives a score of about ``tiny^α`` instead of 0.
    """
    if form == "geometric":
        tiny = torch.finfo(probs.dtype).tiny
        log_score = probs.clamp(min=tiny).log_().mul_(alpha)
        log_score += iomin.clamp(min=tiny).log_().mul_(1.0 - alpha)
        return log_score.exp_()
    return alpha * probs + (1.0 - alpha) * iomin


def _iac_labels(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    cls_probs: Tensor,
    *,
    fg_iou: float,
    bg_iou: float,
    alpha: float,
    score_thr: float,
    form: IACForm,
    allow_low_quality_matches: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """IAC labels for G >= 1; returns ``(labels [A], matched_gt [A], recalled [A] bool)``."""
    if cls_probs.dim() != 2 or cls_probs.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"cls_probs must be [num_anchors={anchors.shape[0]}, num_classes], "
            f"got {list(cls_probs.shape)}"
        )
    iou, iomin = box_iou_iomin(anchors, gt_boxes)  # [A, G] each
    probs = cls_probs.index_select(1, gt_labels).to(iou.dtype)  # [A, G]
    # An anchor recalled for a ground truth it does not touch would be a label error: only
    # overlapping pairs compete for the S rule (this also covers α = 1, where S = p).
    score = iac_scores(iomin, probs, alpha=alpha, form=form)
    score = score.masked_fill(iou <= 0, float("-inf"))  # [A, G]

    max_iou, argmax_iou = iou.max(dim=1)  # [A]
    max_score, argmax_score = score.max(dim=1)  # [A]
    by_iou = (max_iou >= fg_iou) & (max_iou > 0)
    if allow_low_quality_matches:
        by_iou |= low_quality_positives(iou)
    recalled = ~by_iou & (max_score >= score_thr)  # the IoU rule fires first

    labels = torch.where(max_iou < bg_iou, NEGATIVE, IGNORED)
    labels = torch.where(by_iou | recalled, POSITIVE, labels)
    matched_gt = torch.where(by_iou, argmax_iou, torch.where(recalled, argmax_score, -1))
    return labels, matched_gt, recalled


def iac_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    cls_probs: Tensor,
    *,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    alpha: float = 0.75,
    score_thr: float = 0.5,
    form: IACForm = "geometric",
) -> tuple[Tensor, Tensor]:
    """IAC labels for one image (SPEC §2.3), vectorized over anchors and ground truths.

    Args:
        anchors: [A, 4] xyxy.
        gt_boxes: [G, 4] xyxy; G may be 0 (every anchor negative).
        gt_labels: [G] int64, columns of ``cls_probs``.
        cls_probs: [A, C] detached probabilities of the anchors' predictions.

    Returns:
        ``(labels, matched_gt)``, both [A] int64. ``labels`` is 1 where ``max_g IoU >= fg_iou``
        (matched to the argmax-IoU gt) or else where ``max_g S >= score_thr`` (matched to the
        argmax-S gt); otherwise 0 where ``max_g IoU < bg_iou`` and -1 (ignored) in between.
        ``matched_gt`` is -1 for every non-positive anchor. Pairs without overlap never
        count for S, so an anchor that touches no ground truth is never positive. Ties go to
        the lowest gt index.
    """
    check_thresholds(fg_iou, bg_iou)
    _check_iac_args(alpha, score_thr, form)
    if gt_boxes.shape[0] == 0:
        result = all_negative(anchors.shape[0], anchors.device)
        return result.labels, result.matched_gt
    labels, matched_gt, _ = _iac_labels(
        anchors,
        gt_boxes,
        gt_labels,
        cls_probs,
        fg_iou=fg_iou,
        bg_iou=bg_iou,
        alpha=alpha,
        score_thr=score_thr,
        form=form,
        allow_low_quality_matches=False,
    )
    return labels, matched_gt


@dataclass(frozen=True, kw_only=True)
class IACAssigner(Assigner):
    """IAC assignment behind the :class:`Assigner` contract (needs ``cls_probs``)."""

    uses_cls_probs: ClassVar[bool] = True

    fg_iou: float = 0.5  # IoU rule: positive at max IoU >= fg_iou
    bg_iou: float = 0.4  # negative below this max IoU (unless recalled)
    alpha: float = 0.75  # weight of the classification probability in S
    score_thr: float = 0.5  # S rule: positive at max S >= score_thr
    form: IACForm = "geometric"  # "geometric" p^α·IoMin^(1−α) or "arithmetic" α·p+(1−α)·IoMin
    warmup_iters: int = 0  # plain max-IoU before this iteration (early probabilities are noise)
    allow_low_quality_matches: bool = False  # every gt keeps its best-IoU anchor(s)

    def __post_init__(self) -> None:
        check_thresholds(self.fg_iou, self.bg_iou)
        _check_iac_args(self.alpha, self.score_thr, self.form)
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {self.warmup_iters}")

    def assign(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        cls_probs: Tensor | None = None,
        *,
        iteration: int = 0,
        num_anchors_per_level: list[int] | None = None,
        pred_boxes: Tensor | None = None,
    ) -> AssignResult:
        if gt_boxes.shape[0] == 0:
            return all_negative(anchors.shape[0], anchors.device)
        if iteration < self.warmup_iters:
            labels, matched_gt = max_iou_labels(
                box_iou_iomin(anchors, gt_boxes)[0],
                fg_iou=self.fg_iou,
                bg_iou=self.bg_iou,
                allow_low_quality_matches=self.allow_low_quality_matches,
            )
            return AssignResult(labels=labels, matched_gt=matched_gt, num_recalled=0)
        if cls_probs is None:
            raise ValueError("IACAssigner needs cls_probs (the head's detached probabilities)")
        labels, matched_gt, recalled = _iac_labels(
            anchors,
            gt_boxes,
            gt_labels,
            cls_probs,
            fg_iou=self.fg_iou,
            bg_iou=self.bg_iou,
            alpha=self.alpha,
            score_thr=self.score_thr,
            form=self.form,
            allow_low_quality_matches=self.allow_low_quality_matches,
        )
        return AssignResult(labels=labels, matched_gt=matched_gt, num_recalled=int(recalled.sum()))
