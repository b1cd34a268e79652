"""The anchor-assignment slot: one result type and one abstract base.

An assigner decides, per anchor, whether it is a positive (and for which ground truth), a
negative, or ignored by the classification loss. Detectors call it once per image and never
look inside it, so anything that labels anchors from boxes and (optionally) the head's own
predictions fits here: max-IoU (RetinaNet), IAC, ATSS, FCOS, FoveaBox and PAA.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

# Per-anchor labels (torchvision's Matcher uses -1 / -2 sentinels; ours are the loss's view).
POSITIVE = 1  # trained towards the matched ground truth's class and box
NEGATIVE = 0  # trained towards background
IGNORED = -1  # contributes to no loss


@dataclass(frozen=True)
class AssignResult:
    """What an assigner decided for the ``A`` anchors of one image."""

    labels: Tensor  # [A] int64: POSITIVE / NEGATIVE / IGNORED
    matched_gt: Tensor  # [A] int64: index into gt_boxes for positives, -1 elsewhere
    num_recalled: int = 0  # positives made by a rule other than IoU >= fg (0 for max-IoU)

    @property
    def num_pos(self) -> int:
        return int((self.labels == POSITIVE).sum())


def all_negative(num_anchors: int, device: torch.device) -> AssignResult:
    """The result for an image without ground truth: every anchor is a negative."""
    labels = torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=device)
    matched_gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
    return AssignResult(labels=labels, matched_gt=matched_gt, num_recalled=0)


class Assigner(abc.ABC):
    """Labels the anchors of one image.

    ``uses_cls_probs`` says whether ``assign`` reads ``cls_probs`` and ``uses_predictions``
    whether it reads ``pred_boxes``; callers pass None for an input the assigner does not
    read, so detectors do not compute what nobody reads.

    Contract (every implementation; constructors take keyword-only arguments):

    ``assign(anchors, gt_boxes, gt_labels, cls_probs, *, iteration=0,
    num_anchors_per_level=None, pred_boxes=None) -> AssignResult``

    - ``anchors`` [A, 4] and ``gt_boxes`` [G, 4] are xyxy in the same pixel frame;
      ``gt_labels`` [G] int64 are class indices (columns of ``cls_probs``).
    - ``cls_probs`` [A, C] or ``None``: the head's current per-class probabilities for each
      anchor (sigmoid, or softmax for softmax heads), detached. Assigners that do not use
      predictions ignore it; those that need it raise ``ValueError`` when it is ``None`` and
      they would use it.
    - ``iteration``: the global training step, for rules with a warm-up.
    - ``num_anchors_per_level``: anchors per FPN level, in the order they are concatenated
      in ``anchors`` (sums to A); rules that pick top-k per level (ATSS, PAA) need it, the
      others ignore it.
    - ``pred_boxes`` [A, 4] or ``None``: the head's current decoded box for each anchor (xyxy,
      same frame, detached). Rules that score anchors by the head's own losses (PAA) read it
      and raise ``ValueError`` when it is ``None``; the others ignore it.
    - G may be 0: every anchor is then NEGATIVE with ``matched_gt == -1``.
    - Returns ``labels`` [A] int64 in {POSITIVE, NEGATIVE, IGNORED} and ``matched_gt``
      [A] int64, the matched ground truth for positives and -1 for every other anchor, both
      on ``anchors.device``. An anchor that overlaps no ground truth is never positive.
    - Never changes its inputs and is deterministic for given inputs.
    """

    uses_cls_probs: ClassVar[bool] = False
    uses_predictions: ClassVar[bool] = False

    @abc.abstractmethod
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
        """Label ``anchors`` [A, 4] against ``gt_boxes`` [G, 4]; see the class docstring."""
