"""Rank & Sort Loss (Oksuz, Cam, Akbas, Kalkan; ICCV 2021) and RS-Net's box-loss balance.

RS Loss ranks every positive (anchor, class) pair above every negative and sorts the
positives among themselves by their IoU targets. Over the positives P and negatives N of the
flattened logits s and targets y (IoU of a positive in its class column, 0 elsewhere), with
``x_ij = s_j − s_i`` and the smoothed step ``H(x) = clamp(x / (2δ) + 0.5, 0, 1)``:

- ``rank⁺(i) = Σ_{j∈P} H(x_ij)``, ``N_FP(i) = Σ_{j∈N} H(x_ij)``, ``rank(i) = rank⁺(i) + N_FP(i)``;
- ranking error ``ℓ_R(i) = N_FP(i) / rank(i)`` (its target is 0);
- current sorting error ``ℓ_S(i) = Σ_{j∈P} H(x_ij) (1 − y_j) / rank⁺(i)`` and target sorting
  error ``ℓ*_S(i) = Σ_{j∈P, y_j≥y_i} H(x_ij) (1 − y_j) / Σ_{j∈P, y_j≥y_i} H(x_ij)``;
- ``L_rank = mean_i ℓ_R(i)`` and ``L_sort = mean_i (ℓ_S(i) − ℓ*_S(i))``.

The step is not differentiable in a useful way, so the gradient is the paper's *identity
update*: each positive's error is the (negated) update of its own logit and is handed, as an
equal and opposite update, to the examples that caused it, in proportion to a pmf:

- ranking: ``∂/∂s_i = −ℓ_R(i)`` and every negative j gets ``ℓ_R(i) · H(x_ij) / N_FP(i)``
  (the ranking pmf), which is ``H(x_ij) / rank(i)``;
- sorting: ``∂/∂s_i = −(ℓ_S(i) − ℓ*_S(i))`` and every mis-sorted positive j (``y_j < y_i``,
  ranked above i by ``H(x_ij) > 0``) gets ``(ℓ_S(i) − ℓ*_S(i)) · H(x_ij) / Σ_{k∈P, y_k<y_i}
  H(x_ik)`` (the sorting pmf);
- both summed over the positives i and divided by |P|.

Each update sums to zero over the examples, so the loss moves no logit "on average".

Computation: the sorting terms are pairwise among the positives (chunked); the ranking terms
against the negatives use that both of their sums are piecewise linear in the logits between
the edges ``s_i ± δ``, so one sort of the negatives and prefix sums give them exactly (see
:func:`_ranking_terms`), without the reference's [P, R] comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

DEFAULT_CHUNK_ELEMENTS = 2**23  # elements of one chunk's [k, P] blocks: 32 MB in float32


def check_rank_sort_params(delta: float, chunk_elements: int) -> None:
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")


def smoothed_step(others: Tensor, anchors: Tensor, delta: float) -> Tensor:
    """``H(others_j − anchors_i)`` [k, n] for anchors [k] and others [n].

    δ > 0: ``clamp(x / (2δ) + 0.5, 0, 1)``, so a tie gives exactly 0.5 (the difference is
    formed first); δ = 0: the hard step ``x >= 0`` (a tie gives 1). Built in place: one
    [k, n] block."""
    x = others[None, :] - anchors[:, None]  # [k, n]
    if delta == 0:
        return (x >= 0).to(others.dtype)
    return x.mul_(1 / (2 * delta)).add_(0.5).clamp_(0, 1)


def _sorting_terms(
    pos_logits: Tensor, pos_targets: Tensor, delta: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rank⁺ [P], sorting error ℓ_S − ℓ*_S [P], sorting update [P])`` of P positives
    ([P] logits and IoUs), the update before division by |P|.

    Pairwise among the positives, k rows at a time: the live [k, P] blocks of a chunk (up to
    three and a mask) hold at most ``chunk`` elements when ``k = chunk // 3P`` is >= 1."""
    num_pos = pos_logits.numel()
    rank_pos = torch.empty_like(pos_logits)  # [P]
    sorting_error = torch.empty_like(pos_logits)  # [P]
    update = torch.zeros_like(pos_logits)  # [P]
    one_minus_y = 1 - pos_targets  # [P]
    rows = max(1, chunk // (3 * num_pos))
    for start in range(0, num_pos, rows):
        stop = min(start + rows, num_pos)
        s_i, y_i = pos_logits[start:stop], pos_targets[start:stop]  # [k]
        # H(0) > 0 on the diagonal: rank⁺(i) > 0, and the target set (IoU at or above y_i)
        # always holds i itself, so neither normaliser is 0.
        h_pos = smoothed_step(pos_logits, s_i, delta)  # [k, P]
        rank_pos[start:stop] = h_pos.sum(dim=1)
        current = (h_pos @ one_minus_y) / rank_pos[start:stop]  # [k] ℓ_S(i)
        ahead = pos_targets[None, :] >= y_i[:, None]  # [k, P]: j at or above i in IoU order
        h_ahead = torch.where(ahead, h_pos, 0)  # [k, P]
        target = (h_ahead @ one_minus_y) / h_ahead.sum(dim=1)  # [k] ℓ*_S(i)
        del h_ahead
        # With no mis-sorted positive h_ahead equals h_pos element for element, so the two
        # sums are bitwise equal and the error exactly 0: the guard only avoids 0 / 0.
        error = current - target  # [k]
        h_missorted = h_pos.masked_fill_(ahead, 0)  # [k, P]: lower IoU, ranked above i
        denom = h_missorted.sum(dim=1)  # [k]
        share = torch.where(denom > 0, error / denom, 0)  # [k]
        update[start:stop] -= error
        update += share @ h_missorted  # the sorting pmf
        sorting_error[start:stop] = error
    return rank_pos, sorting_error, update


def _ranking_terms(
    pos_logits: Tensor, rank_pos: Tensor, neg_logits: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ranking error ℓ_R [P], ranking update [R], order [R])`` of P positives against R
    negatives: the update ``Σ_i H(x_ij) / rank(i)`` (before division by |P|) of negative
    ``order[n]`` is ``update[n]``, i.e. in ascending order of the negatives' logits.

    No [P, R] block: both sums are piecewise linear in the logits between the edges
    ``s_i ± δ``, so prefix sums over the sorted negatives give each positive's ``N_FP`` and
    prefix sums over the sorted edges give each negative's update, in O((P + R) log R) and
    about 40 bytes per negative. Exact up to rounding: H is continuous, so which side of an
    edge a tie falls on changes no value (δ = 0 keeps its ``>=``). Float64, after shifting
    every logit by the mean positive one (H sees only differences): small prefix sums."""
    shift = pos_logits.double().mean()
    s = pos_logits.double() - shift  # [P]
    sorted_logits, order = torch.sort(neg_logits)  # [R] ascending
    t = sorted_logits.double().sub_(shift)  # [R]
    del sorted_logits
    num_neg = t.numel()
    if delta == 0:  # H(x) = [x >= 0]: count the negatives at or above each positive
        num_fp = (num_neg - torch.searchsorted(t, s)).double()  # [P]
    else:
        prefix = F.pad(t.cumsum(0), (1, 0))  # [R + 1]: prefix[n] = Σ of the n lowest
        lo = torch.searchsorted(t, s - delta)  # [P] negatives below s − δ: H = 0
        hi = torch.searchsorted(t, s + delta)  # [P] ... below s + δ; the rest have H = 1
        in_window = (hi - lo).double()  # [P] on the slope of H
        slope_sum = prefix[hi] - prefix[lo] - in_window * s  # [P] Σ (t_j − s_i) there
        del prefix
        num_fp = slope_sum / (2 * delta) + 0.5 * in_window + (num_neg - hi)  # [P]
    rank = rank_pos.double() + num_fp  # [P]
    ranking_error = num_fp / rank  # [P]
    weight = rank.reciprocal()  # [P]: what each positive hands out per unit of H
    # G(t) = Σ_i weight_i H(t − s_i) = α + β t between consecutive edges. Passing an edge
    # (edge <= t) adds (dα, dβ): at s − δ the positive starts on the slope, at s + δ it
    # leaves it for the constant weight (δ = 0: one edge at s, straight to the constant).
    if delta == 0:
        edges, d_alpha, d_beta = s, weight, torch.zeros_like(weight)  # [E = P]
    else:
        half_slope = weight / (2 * delta)  # [P]
        edges = torch.cat([s - delta, s + delta])  # [E = 2P]
        d_alpha = torch.cat([0.5 * weight - half_slope * s, 0.5 * weight + half_slope * s])
        d_beta = torch.cat([half_slope, -half_slope])
    edges, edge_order = torch.sort(edges, stable=True)  # [E]
    alpha = F.pad(d_alpha[edge_order].cumsum(0), (1, 0))  # [E + 1]
    beta = F.pad(d_beta[edge_order].cumsum(0), (1, 0))  # [E + 1]
    first_passing = torch.searchsorted(t, edges)  # [E] first sorted negative with t >= edge
    # Integer counts (exact, and 1-D scatter_add_ is deterministic on CUDA as well).
    passed = torch.zeros(num_neg + 1, dtype=torch.int64, device=t.device)
    passed.scatter_add_(0, first_passing, torch.ones_like(first_passing)).cumsum_(0)
    passed = passed[:num_neg]  # [R] edges at or below each sorted negative
    update = beta[passed].mul_(t).add_(alpha[passed])  # [R], sorted order
    dtype = pos_logits.dtype
    return ranking_error.to(dtype), update.to(dtype), order


class _RankSortFunction(torch.autograd.Function):
    """Values of RS Loss forward, the identity update backward (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, targets: Tensor, delta: float, chunk_elements: int
    ) -> tuple[Tensor, Tensor]:
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        scores = logits.detach().to(compute_dtype)  # [M]
        ious = targets.detach().to(compute_dtype)  # [M]
        positive = ious > 0  # [M]
        pos_index = positive.nonzero().squeeze(1)  # [P]
        num_pos = pos_index.numel()
        zero = scores.new_zeros(())
        if num_pos == 0:
            neg_index = pos_index  # empty
            grads = (scores.new_zeros(0),) * 3
            ranking, sorting = zero, zero.clone()
        else:
            pos_logits = scores[pos_index]  # [P]
            # A negative more than δ below every positive has H = 0 against all of them: it
            # changes neither error nor gets any update, so it is left out (the paper's point).
            threshold = pos_logits.min() - delta
            neg_index = ((~positive) & (scores >= threshold)).nonzero().squeeze(1)  # [R]
            rank_pos, sorting_error, pos_sort = _sorting_terms(
                pos_logits, ious[pos_index], delta, chunk_elements
            )
            ranking_error, neg_rank, order = _ranking_terms(
                pos_logits, rank_pos, scores[neg_index], delta
            )
            neg_index = neg_index[order]  # [R], in the order of neg_rank
            ranking, sorting = ranking_error.mean(), sorting_error.mean()
            grads = (-ranking_error / num_pos, pos_sort / num_pos, neg_rank / num_pos)
        poisoned = scores.isnan().any()  # NaN logits must show in the loss, not vanish
        ranking = torch.where(poisoned, torch.nan, ranking)
        sorting = torch.where(poisoned, torch.nan, sorting)
        ctx.save_for_backward(pos_index, neg_index, *grads)
        ctx.num_elements = scores.numel()  # type: ignore[attr-defined]
        ctx.logits_dtype = logits.dtype  # type: ignore[attr-defined]
        return ranking, sorting

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ranking: Tensor, grad_sorting: Tensor) -> tuple[Any, ...]:
        pos_index, neg_index, pos_rank, pos_sort, neg_rank = ctx.saved_tensors
        grad = pos_rank.new_zeros(ctx.num_elements)  # [M]
        grad[pos_index] = grad_ranking * pos_rank + grad_sorting * pos_sort
        grad[neg_index] = grad_ranking * neg_rank
        return grad.to(ctx.logits_dtype), None, None, None


def rank_sort_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    delta: float = 0.5,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Rank & Sort Loss over all valid (anchor, class) pairs, flattened.

    Args:
        logits: [M] raw scores of every valid (anchor, class) pair (ignored anchors left
            out), e.g. ``cls_logits[valid].flatten()``.
        targets: [M] in [0, 1]: a positive pair's IoU target (the IoU of its predicted box
            with its ground truth, detached) in its class column, 0 for every other pair.
            Positives are the pairs with ``targets > 0``, as in the reference code. **A
            positive whose IoU is exactly 0 is a negative**: the 1-D interface cannot tell it
            from background, and a box that does not overlap its ground truth is a false
            positive at every IoU threshold of COCO AP, so ranking it below the positives is
            what the metric rewards. A detector that wants such boxes kept positive clamps
            their IoU to a small floor before the call.
        delta: half-width δ of the smoothed step (paper: 0.5; 0 gives the hard step). It is
            also the margin: a negative adds error until it sits δ below a positive.
        chunk_elements: memory bound of the pairwise part. The sorting terms compare the
            positives with each other, ``k = max(1, chunk_elements // 3P)`` rows at a time,
            so their [k, P] blocks hold at most ``chunk_elements`` elements (32 MB in
            float32 at the default 2**23). The ranking terms never form a [P, R] block.

    Returns:
        ``(ranking_loss, sorting_loss)``, 0-dim each, in float32 or wider: the means over
        the positives of ``ℓ_R`` and of ``ℓ_S − ℓ*_S``, already normalised (the detector
        divides by nothing). Their gradient is the identity update of the module docstring,
        separably: the logits receive ``g_rank · U_rank + g_sort · U_sort`` for the upstream
        gradients of the two outputs, so ``(ranking + sorting).backward()`` gives exactly
        the paper's update. (The reference code applies the summed update scaled by the
        ranking output's gradient alone; here weighting one output weights only its part.)
        No gradient reaches ``targets``.

    Edge cases and choices:

    - No positives (including M = 0): both losses are 0 and the gradient is 0, never NaN.
    - No negative within δ of the lowest positive: the ranking loss and its update are 0.
    - Ties: tied logits give ``H(0) = 0.5`` both ways (δ > 0), so tied positives each count
      the other half above; i counts itself the same way (``rank⁺(i) >= 0.5 > 0``, the
      reference's convention). Tied IoUs are "at or above" each other in the target order,
      so they are never mis-sorted against each other.
    - The reference skips a pmf whose normaliser is <= 1e-10; here only exact zeros are
      skipped: the ranking share is ``H / rank(i)`` with ``rank(i) >= 0.5`` and the sorting
      pmf sums to 1, so no small normaliser divides anything it does not also bound.
    - Cost: the ranking terms come from one sort of the R relevant negatives and prefix
      sums, O((P + R) log R) time and about 40 bytes of temporaries per relevant negative,
      instead of the reference's loop over positives, O(P·R); the sorting terms are
      pairwise among the positives, O(P²), chunked. 2000 positives against 1M relevant
      negatives peak at about 64 MB above the inputs (CPU, masks and saved state
      included). Device-agnostic (CPU and CUDA) and deterministic: two host syncs
      (counting positives and relevant negatives), one Python loop over chunks of
      positives, none over positives.
    - Precision: the sorting terms in float32 (float64 stays float64), the ranking terms
      in float64; the gradient is returned in the logits' dtype. NaN in the logits makes
      both losses NaN, for the training loop's non-finite check.
    """
    check_rank_sort_params(delta, chunk_elements)
    if logits.dim() != 1 or logits.shape != targets.shape:
        raise ValueError(
            "rank_sort_loss needs flattened logits [M] and targets [M]; got "
            f"{list(logits.shape)} and {list(targets.shape)}"
        )
    ranking, sorting = _RankSortFunction.apply(logits, targets, delta, chunk_elements)
    return ranking, sorting


def rs_box_loss(box_losses: Tensor, pos_scores: Tensor, rs_loss: Tensor) -> Tensor:
    """RS-Net's box term: score-weighted mean of the positives' box losses, scaled to RS.

    ``L_box = Σ_i w_i ℓ_i / Σ_i w_i`` with ``w_i = pos_scores_i`` (detached), then
    ``λ_box · L_box`` with ``λ_box = L_RS / L_box``, both detached: the returned value is
    ``L_RS`` and its gradient that of ``L_box`` scaled by ``λ_box``. A sum of weights below
    1e-12 counts as 1, as in the reference head; ``L_box = 0`` gives 0 (λ is left at 0
    rather than dividing by zero).

    Args:
        box_losses: [P] each positive's box loss ℓ_i (RS-Net: 1 − GIoU), with its graph.
        pos_scores: [P] each positive's max-over-classes probability ``σ(x).max(dim=1)``.
        rs_loss: 0-dim ``ranking_loss + sorting_loss`` of the same iteration.

    Returns:
        0-dim box loss to add to the two RS losses; ``box_losses.sum() * 0`` when P = 0.
    """
    if box_losses.shape != pos_scores.shape or box_losses.dim() != 1:
        raise ValueError(
            f"box_losses {list(box_losses.shape)} and pos_scores {list(pos_scores.shape)} "
            "must both be [P]"
        )
    if box_losses.numel() == 0:
        return box_losses.sum() * 0
    weights = pos_scores.detach().to(box_losses.dtype)  # [P]
    total = weights.sum()
    mean_box = (weights * box_losses).sum() / torch.where(total < 1e-12, 1, total)
    value = mean_box.detach()
    scale = torch.where(value > 0, rs_loss.detach().to(value.dtype) / value, 0)
    return scale * mean_box


@dataclass(frozen=True, kw_only=True)
class RankSortLoss:
    """Slot object: ``loss(logits [M], targets [M]) -> (ranking_loss, sorting_loss)``.

    Not element-wise (so not an :class:`ElementwiseClassificationLoss`): it compares all
    (anchor, class) pairs of the batch, normalises itself, and its gradient is the identity
    update of :func:`rank_sort_loss`. ``uses_iou_targets`` is True.

    What the detector must do when RS is the classification loss (RS-Net: Oksuz et al.,
    ICCV 2021, Fig. 3(c): tuning-free task balancing by value, ``λ_t = L_RS / L_t``; code
    ``kemaloksuz/RankSortLoss``, ``mmdet/models/dense_heads/rank_based_atss_head.py``,
    ``RankBasedATSSHead.loss``):

    1. Targets: for every valid anchor (positives and negatives, ignored ones left out),
       every class; a positive's column of its ground-truth class holds the IoU of its
       *decoded predicted box* with that ground truth, computed without gradient; every
       other entry is 0. Call ``loss(cls_logits[valid].flatten(), iou_targets.flatten())``.
    2. Use ``loss_rank`` and ``loss_sort`` as they come: no division by the number of
       positives, no per-anchor sum, no α or γ, no loss weight.
    3. Box loss (1 − GIoU per positive in RS-Net): not a sum divided by the number of
       positives but the mean weighted by each positive's detached max-over-classes
       probability, ``Σ w_i ℓ_i / Σ w_i``; then rescale it by ``λ_box = (L_rank +
       L_sort) / L_box``, detached, recomputed every iteration (no configured weight):
       :func:`rs_box_loss` does both. The box term then equals ``L_RS`` in value.
    4. No positives in the batch: every loss is 0 (``rs_box_loss`` returns a zero that keeps
       the graph). The sorting objective replaces the centerness / IoU branch, which
       RS-Net drops; test-time scores stay ``σ(logit)``.
    5. Under DDP each worker ranks its own batch, as the reference does (no all-gather of
       logits; the normalisation is by the worker's own positives).
    """

    uses_iou_targets: ClassVar[bool] = True

    delta: float = 0.5  # half-width of the smoothed step, also the ranking margin
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS  # pairs per chunk (memory bound)

    def __post_init__(self) -> None:
        check_rank_sort_params(self.delta, self.chunk_elements)

    def __call__(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return rank_sort_loss(
            logits, targets, delta=self.delta, chunk_elements=self.chunk_elements
        )
