"""The classification-loss slot: one abstract base for the element-wise members.

Focal, Quality Focal and Varifocal Loss score every (anchor, class) element on its own; the
detector sums them per anchor and normalises by the number of positives. Rank & Sort Loss
(:class:`detectors.losses.rank_sort.RankSortLoss`) ranks all elements against each other,
returns two normalised scalars and is deliberately *not* a member of this base: a detector
tells the two apart with ``isinstance(loss, ElementwiseClassificationLoss)``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from torch import Tensor


class ElementwiseClassificationLoss(abc.ABC):
    """Per-element classification loss of a sigmoid head, no reduction.

    Contract (every implementation; constructors take keyword-only arguments):

    ``__call__(logits, targets) -> loss``

    - ``logits`` [N, C]: raw scores (before the sigmoid) of the N valid anchors (positives
      and negatives; ignored anchors are left out by the caller) for the C classes.
    - ``targets`` [N, C] in [0, 1], same shape: 0 for every background element; for a
      positive, its class column holds 1 (one-hot, ``uses_iou_targets = False``) or the
      IoU of its predicted box with its ground truth (``uses_iou_targets = True``).
    - Returns ``loss`` [N, C] in the dtype of ``logits``: finite and >= 0 for finite logits
      (also at ±30 and at targets exactly 0 and 1), computed from the logits (never from
      ``log(sigmoid)``). No reduction: summing and normalising belong to the detector.
    - ``targets`` are supervision, never trained: no gradient flows into them even when
      they require grad (IoUs of predicted boxes would otherwise train the box branch).
    - N = 0 gives an empty [0, C]. Mismatched shapes raise ``ValueError``. Deterministic;
      inputs are never changed.
    """

    uses_iou_targets: ClassVar[bool] = False  # positives' class column: IoU, not 1

    @abc.abstractmethod
    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Loss per element; see the class docstring."""


def check_elementwise_inputs(logits: Tensor, targets: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` and ``targets`` are both [N, C]."""
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(
            "a classification loss needs logits [N, C] and targets of the same shape; got "
            f"{list(logits.shape)} and {list(targets.shape)}"
        )
