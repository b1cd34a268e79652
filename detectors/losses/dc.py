"""Dynamic Coefficient (DC) weights for the positives' classification loss (SPEC §2.2).

Our reading of the paper (its equations did not survive): per positive ``i`` with predicted
box ``b_i`` and assigned ground truth ``g_i``,

- localization error ``e_i = ‖c(b_i) − c(g_i)‖₂ / sqrt(w_g h_g) + |w_b − w_g| / w_g +
  |h_b − h_g| / h_g`` (:func:`detectors.box_ops.elementwise_localization_error`);
- coefficient ``λ_i = 1 / (e_i + ε)``;
- normalised ``λ'_i = λ_i · Σ_j ℓ_j / Σ_j λ_j ℓ_j`` so the positives' classification loss
  keeps its value, ``Σ λ'_i ℓ_i = Σ ℓ_i``, while a well-localized positive gets a larger
  share of the gradient and a badly localized one a smaller share.

The weights are detached: they steer the classification gradient and are not trained.
The detector's loss is ``Σ_pos λ'_i ℓ_i + Σ_neg ℓ_j + L_reg`` (negatives unweighted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detectors.box_ops import elementwise_localization_error


def _raw_weights(pred_boxes: Tensor, gt_boxes: Tensor, eps: float) -> Tensor:
    """λ = 1 / (e + ε) [N], detached, in float32 at least."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (a perfect box has error 0), got {eps}")
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.dim() != 2 or pred_boxes.shape[1] != 4:
        raise ValueError(
            f"expected [N, 4] and [N, 4] boxes, got {pred_boxes.shape}, {gt_boxes.shape}"
        )
    dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
    with torch.no_grad():
        error = elementwise_localization_error(pred_boxes.to(dtype), gt_boxes.to(dtype))
        return 1.0 / (error + eps)


def dc_weights(pred_boxes: Tensor, gt_boxes: Tensor, cls_losses: Tensor, *, eps: float) -> Tensor:
    """Normalised DC coefficients ``λ'`` of the positives, detached.

    Args:
        pred_boxes: [N, 4] decoded predicted boxes of the positives, xyxy, absolute pixels.
        gt_boxes: [N, 4] their assigned ground-truth boxes, xyxy.
        cls_losses: [N] each positive's classification loss ``ℓ_i`` (≥ 0; e.g. its focal loss
            summed over classes).
        eps: ``ε`` in ``λ = 1 / (e + ε)``, > 0; bounds the weight of a perfect box at 1/ε.

    Returns:
        [N] ``λ'`` with ``Σ λ'_i ℓ_i = Σ ℓ_i``. When ``Σ λ_j ℓ_j = 0`` (every ℓ is 0) the
        factor is undefined; ``λ / mean(λ)`` is returned, the limit for equal losses (any
        weights give the same, zero, weighted sum). Empty input gives an empty tensor.
    """
    weights = _raw_weights(pred_boxes, gt_boxes, eps)  # [N]
    if cls_losses.shape != weights.shape:
        raise ValueError(f"cls_losses {cls_losses.shape} must be [N] = {weights.shape}")
    losses = cls_losses.detach().to(weights.dtype)
    weighted_total = (weights * losses).sum()
    has_loss = weighted_total > 0
    # The 'double where': keep both branches finite so no 0/0 is ever formed.
    factor = torch.where(
        has_loss,
        losses.sum() / torch.where(has_loss, weighted_total, 1.0),
        weights.numel() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny),
    )
    return weights * factor


def dc_weighted_sum(
    cls_losses_pos: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    *,
    eps: float,
    normalize: bool = True,
) -> Tensor:
    """``Σ_i λ'_i ℓ_i`` over the positives, 0-dim, differentiable through ``ℓ`` only.

    Args:
        cls_losses_pos: [N] each positive's classification loss (with its graph).
        pred_boxes, gt_boxes: [N, 4] xyxy, as in :func:`dc_weights`.
        eps: see :func:`dc_weights`.
        normalize: True uses ``λ'`` (the sum keeps its undirected value); False uses the raw
            ``λ = 1/(e + ε)``, which also rescales the positives' loss (an ablation knob).
    """
    if normalize:
        weights = dc_weights(pred_boxes, gt_boxes, cls_losses_pos, eps=eps)
    else:
        weights = _raw_weights(pred_boxes, gt_boxes, eps)
    return (weights * cls_losses_pos).sum()


@dataclass(frozen=True, kw_only=True)
class DCWeighting:
    """The DC loss as an object: ``weights(pred_boxes [P, 4], gt_boxes [P, 4], cls_losses
    [P]) -> [P]``, detached, to multiply the positives' classification losses by.

    ``normalize``: λ' of :func:`dc_weights` (the positives' loss keeps its value); False:
    the raw ``λ = 1 / (e + ε)``, which also rescales it (an ablation knob)."""

    eps: float  # keeps λ = 1 / (e + ε) finite for perfect boxes
    normalize: bool = True

    def __call__(self, pred_boxes: Tensor, gt_boxes: Tensor, cls_losses: Tensor) -> Tensor:
        if self.normalize:
            return dc_weights(pred_boxes.detach(), gt_boxes, cls_losses.detach(), eps=self.eps)
        return _raw_weights(pred_boxes.detach(), gt_boxes, self.eps)
