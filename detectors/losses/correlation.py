"""Correlation Loss (Kahraman, Oksuz, Kalkan, Akbas; AAAI 2023): ``L = 1 − ρ(s, IoU)``.

Over the positive examples, ``s_i`` is the predicted probability of the ground-truth class
and ``IoU_i`` the IoU of the decoded box with its ground truth. Raising the correlation makes
the best-placed box also the best-scored one, which is what NMS and COCO AP reward.

Three coefficients, one contract (:class:`CorrelationFn`, table :data:`CORRELATIONS`):

- ``pearson``: ``Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² Σ(y−ȳ)²)``.
- ``concordance`` (Lin 1989): ``2·cov(x, y) / (var(x) + var(y) + (x̄−ȳ)²)`` with population
  moments (``ddof=0``) or, as the reference code did, unbiased ones (``ddof=1``).
- ``spearman``: Pearson on ``torchsort.soft_rank(·, regularization="l2",
  regularization_strength=ε)`` of both inputs.

**The Spearman collapse.** ``soft_rank(θ, ε)`` is the Euclidean projection of ``θ/ε`` onto
the permutahedron (the convex hull of the permutations of ``1..n``, whose neighbouring
coordinates differ by 1). When every gap between neighbouring sorted values of ``θ/ε`` is far
below 1 the projection is a pure shift, ``θ/ε + const``, and Pearson on those "ranks" is
Pearson on the inputs. With ε = 1.0 (the reference code) and n values in [0, 1], the gaps are
about 1/n, so the reference "Spearman Loss" equals 1 − Pearson in value and gradient at any
pool size; at n = 500 even ε = 0.01 collapses. ``strength_mode="absolute"`` keeps that
behaviour (ε = ``strength``, for reproducing the paper); ``strength_mode="relative"`` scales
ε to the data so ranks stay real at every n (see :func:`spearman`).

Guards: a pool with fewer than 2 members, or with a constant input, has no correlation; its
loss is exactly 0 (the graph stays connected so ``backward`` runs and gives zero gradient),
never NaN. NaN in the inputs propagates to the loss on purpose: the training loop's
non-finite check should see it. Moments are computed in at least float32, with autocast
off, so half-precision inputs under ``torch.autocast`` give the float32 result.

Front ends: :func:`correlation_loss` (one pool, SPEC's API), :func:`correlation_coefficient`
(ρ for logging) and :func:`pooled_correlation_loss` (what detectors call once per
iteration: pools by level or image, gradient routing, cross-worker pooling under DDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

CorrelationKind = Literal["pearson", "concordance", "spearman"]
StrengthMode = Literal["absolute", "relative"]
GradTo = Literal["cls", "reg", "both"]

STRENGTH_MODES: tuple[str, ...] = ("absolute", "relative")
GRAD_TO: tuple[str, ...] = ("cls", "reg", "both")


class CorrelationFn(Protocol):
    """Correlation of ``x`` and ``y`` within each pool.

    Args:
        x, y: [n] floating tensors of equal length (already in the compute dtype).
        pool_index: [n] int64, the pool of each element, in ``[0, num_pools)``.
        num_pools: number of pools P (pools may be empty).
        strength, strength_mode: soft-rank regularization (used by ``spearman`` only).
        ddof: delta degrees of freedom of the moments (used by ``concordance`` only; it
            cancels in Pearson and Spearman).

    Returns:
        ``(rho, valid)``: rho [P] is finite everywhere (a placeholder where invalid, so
        ``torch.where`` on it back-propagates no NaN); valid [P] bool is True where the pool
        has at least 2 members and neither input is constant in it.
    """

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        pool_index: Tensor,
        num_pools: int,
        *,
        strength: float,
        strength_mode: StrengthMode,
        ddof: int,
    ) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class _PoolMoments:
    """Per-pool first and centred second moments (sums, not averages), all [P]."""

    count: Tensor
    mean_x: Tensor
    mean_y: Tensor
    sum_xx: Tensor  # Σ (x − x̄)²
    sum_yy: Tensor  # Σ (y − ȳ)²
    sum_xy: Tensor  # Σ (x − x̄)(y − ȳ)
    valid: Tensor  # bool: count ≥ 2, x and y non-constant, both centred sums > 0


def _segment_sum(values: Tensor, pool_index: Tensor, num_pools: int) -> Tensor:
    """Σ of ``values`` [n] per pool -> [P] (differentiable)."""
    return values.new_zeros(num_pools).index_add(0, pool_index, values)


def _non_constant(values: Tensor, pool_index: Tensor, num_pools: int) -> Tensor:
    """[P] bool: the pool holds at least two distinct values (exact, no rounding involved).

    Compared exactly rather than through the variance because a float32 mean of a constant
    input is not always the constant itself, leaving a tiny spurious variance.
    """
    values = values.detach()
    high = values.new_full((num_pools,), -math.inf)
    low = values.new_full((num_pools,), math.inf)
    high = high.scatter_reduce(0, pool_index, values, "amax")
    low = low.scatter_reduce(0, pool_index, values, "amin")
    # NaN compares False everywhere: mark such pools non-constant so the NaN reaches the loss.
    return (high > low) | high.isnan() | low.isnan()


def _pool_moments(x: Tensor, y: Tensor, pool_index: Tensor, num_pools: int) -> _PoolMoments:
    # Two passes (means, then centred sums): one-pass Σx² − n·x̄² loses float32 precision.
    count = _segment_sum(torch.ones_like(x), pool_index, num_pools)
    mean_x = _segment_sum(x, pool_index, num_pools) / count.clamp(min=1)
    mean_y = _segment_sum(y, pool_index, num_pools) / count.clamp(min=1)
    # index_select, not mean_x[pool_index]: advanced indexing goes multi-threaded from a few
    # thousand elements on the CPU and then costs milliseconds whenever a core is busy.
    dx = x - mean_x.index_select(0, pool_index)  # [n]
    dy = y - mean_y.index_select(0, pool_index)  # [n]
    sum_xx = _segment_sum(dx * dx, pool_index, num_pools)
    sum_yy = _segment_sum(dy * dy, pool_index, num_pools)
    sum_xy = _segment_sum(dx * dy, pool_index, num_pools)
    valid = (
        (count >= 2)
        & _non_constant(x, pool_index, num_pools)
        & _non_constant(y, pool_index, num_pools)
        & ~(sum_xx <= 0)  # written so NaN stays valid (and reaches the loss)
        & ~(sum_yy <= 0)
    )
    return _PoolMoments(count, mean_x, mean_y, sum_xx, sum_yy, sum_xy, valid)


def _safe(denominator: Tensor, valid: Tensor) -> Tensor:
    """``denominator`` where valid, 1 elsewhere: the 'double where' that keeps the gradient
    of masked-out pools finite (0 · inf would be NaN)."""
    return torch.where(valid, denominator, torch.ones_like(denominator))


def pearson(
    x: Tensor,
    y: Tensor,
    pool_index: Tensor,
    num_pools: int,
    *,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
) -> tuple[Tensor, Tensor]:
    """Pearson's r per pool (see :class:`CorrelationFn`; ``strength*`` and ``ddof`` unused)."""
    m = _pool_moments(x, y, pool_index, num_pools)
    # sqrt of each factor, not of the product: the product of two small float32 sums underflows.
    denominator = _safe(m.sum_xx, m.valid).sqrt() * _safe(m.sum_yy, m.valid).sqrt()
    rho = torch.where(m.valid, m.sum_xy / denominator, torch.zeros_like(denominator))
    return rho, m.valid


def concordance(
    x: Tensor,
    y: Tensor,
    pool_index: Tensor,
    num_pools: int,
    *,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
) -> tuple[Tensor, Tensor]:
    """Lin's concordance correlation coefficient per pool (``strength*`` unused).

    ``ddof=0``: population moments (Lin 1989). ``ddof=1``: unbiased variances and covariance
    with the squared mean difference unchanged, which is what the reference code computes.
    """
    m = _pool_moments(x, y, pool_index, num_pools)
    valid = m.valid & (m.count > ddof)
    dof = _safe(m.count - ddof, valid)
    denominator = m.sum_xx / dof + m.sum_yy / dof + (m.mean_x - m.mean_y) ** 2
    rho = torch.where(valid, 2 * (m.sum_xy / dof) / _safe(denominator, valid), 0.0)
    return rho, valid


def _soft_rank_rows(theta: Tensor) -> Tensor:
    """torchsort's l2 soft rank of each row of ``theta`` [R, m] at ε = 1 -> [R, m].

    ``soft_rank(v, ε)`` computes ``θ = v · (1/ε)`` first thing and scales the gradient by the
    same factor, so ranking ``v · (1/ε)`` at ε = 1 is the same computation, bit for bit, and
    lets ε differ per row.
    """
    try:
        import torchsort
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "kind='spearman' needs torchsort 0.1.10 (pip install --no-build-isolation "
            "torchsort==0.1.10 after torch)"
        ) from error
    ranks: Tensor = torchsort.soft_rank(theta, regularization="l2", regularization_strength=1.0)
    return ranks


def _pool_layout(pool_index: Tensor, num_pools: int) -> tuple[Tensor, Tensor, int]:
    """Members per pool [P], each element's slot within its pool [n], and the largest pool
    size (a host int: the one device sync Spearman needs)."""
    counts = torch.bincount(pool_index, minlength=num_pools)  # [P]
    order = torch.argsort(pool_index, stable=True)  # [n] elements grouped by pool
    starts = torch.cumsum(counts, 0) - counts  # [P] first slot of each pool in `order`
    sorted_slot = torch.arange(order.numel(), device=order.device) - starts.index_select(
        0, pool_index.index_select(0, order)
    )
    slot = torch.empty_like(pool_index).scatter(0, order, sorted_slot)  # [n]
    return counts, slot, int(counts.max()) if num_pools else 0


def _soft_ranks_per_pool(
    values: Tensor,
    pool_index: Tensor,
    num_pools: int,
    strength: float,
    strength_mode: StrengthMode,
) -> Tensor:
    """Soft ranks of each row of ``values`` [R, n] (R inputs), within each pool -> [R, n].

    All R × P (input, pool) groups are ranked in one ``soft_rank`` call on a [R·P, m] matrix,
    m the largest pool, padded with a constant far above the row's values. The padding takes
    the top ranks and cannot change the real entries' soft ranks: the projection is an
    isotonic regression of ``sort(θ) − (m, …, 1)``, the real entries see exactly the weights
    ``(n_k, …, 1)`` of their own pool, and the padding block (≥ 2m above every real value)
    never pools with them. So each pool's ranks are those of ranking it alone, without a
    Python loop over pools or one launch per pool on the GPU.
    """
    num_inputs, n = values.shape
    counts, slot, width = _pool_layout(pool_index, num_pools)
    if width < 2:  # every pool has 0 or 1 members: all skipped, the "ranks" are never read
        return values
    group = torch.arange(num_inputs, device=values.device)[:, None] * num_pools + pool_index
    group = group.reshape(-1)  # [R·n] row of each element in the rank matrix
    detached = values.detach().reshape(-1)
    high = detached.new_full((num_inputs * num_pools,), -math.inf)
    high = high.scatter_reduce(0, group, detached, "amax")  # [R·P]
    if strength_mode == "absolute":
        inverse_strength: Tensor | float = 1.0 / strength
        high = high * inverse_strength
    else:  # ε = strength × mean neighbour gap of the (input, pool) group; see spearman()
        low = detached.new_full((num_inputs * num_pools,), math.inf)
        low = low.scatter_reduce(0, group, detached, "amin")
        mean_gap = (high - low) / (counts.repeat(num_inputs) - 1).clamp(min=1)
        has_gap = mean_gap > 0  # a constant group is skipped anyway; any finite ε will do
        inverse = torch.where(has_gap, 1.0 / (strength * _safe(mean_gap, has_gap)), 1.0)
        inverse_strength = inverse.index_select(0, group)  # [R·n]; a scale, detached on purpose
        high = high * inverse  # the padding is placed in θ units
    theta = values.reshape(-1) * inverse_strength  # [R·n]
    padding = torch.where(high > -math.inf, high + 2 * width + 1, 0.0)  # [R·P]
    cell = group * width + slot.repeat(num_inputs)  # [R·n] flat position in the matrix
    matrix = padding[:, None].expand(-1, width).reshape(-1).scatter(0, cell, theta)
    ranks = _soft_rank_rows(matrix.reshape(-1, width)).reshape(-1).index_select(0, cell)
    return ranks.reshape(num_inputs, n)


def spearman(
    x: Tensor,
    y: Tensor,
    pool_index: Tensor,
    num_pools: int,
    *,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
) -> tuple[Tensor, Tensor]:
    """Spearman's ρ per pool: Pearson on torchsort l2 soft ranks of ``x`` and of ``y``.

    ``strength_mode="absolute"``: ε = ``strength`` for every pool (the reference code used
    1.0, which makes this Pearson; see the module docstring).

    ``strength_mode="relative"``: per pool and per input, ε = ``strength`` × the mean gap
    between neighbouring sorted values, ``(max − min) / (n − 1)``. Why: the soft-vs-hard
    decision depends only on the gaps of ``θ/ε`` compared with the rank gap 1. Dividing by the
    mean gap makes the mean gap of ``θ/ε`` exactly ``1/strength`` whatever n is and whatever
    the inputs' units (soft_rank ignores shifts, and ε scales with the data), so one strength
    means the same softness for 5 or 5000 positives, for scores spanning 0.05 or IoUs spanning
    0.5. ``strength → 0``: true ranks (ties get their average rank, as scipy's); ``≈ 1``:
    neighbours closer than about one mean gap are blended; ``≫ 1``: Pearson again. ε is
    detached. Caveat: an outlier stretches the range, so the bulk of a skewed pool sees a
    larger effective strength than its nominal value.
    """
    ranks_x, ranks_y = _soft_ranks_per_pool(
        torch.stack([x, y]), pool_index, num_pools, strength, strength_mode
    )
    rho, valid = pearson(ranks_x, ranks_y, pool_index, num_pools)
    # Constant inputs have (nearly) constant soft ranks; judge them on the inputs themselves.
    valid = valid & _non_constant(x, pool_index, num_pools)
    valid = valid & _non_constant(y, pool_index, num_pools)
    return torch.where(valid, rho, 0.0), valid


CORRELATIONS: dict[str, CorrelationFn] = {
    "pearson": pearson,
    "concordance": concordance,
    "spearman": spearman,
}


def _check_options(kind: str, strength: float, strength_mode: str, ddof: int) -> None:
    if kind not in CORRELATIONS:
        raise ValueError(
            f"unknown correlation kind {kind!r}; expected one of {list(CORRELATIONS)}"
        )
    _check_strength_and_ddof(strength, strength_mode, ddof)


def _check_strength_and_ddof(strength: float, strength_mode: str, ddof: int) -> None:
    if strength_mode not in STRENGTH_MODES:
        raise ValueError(f"unknown strength_mode {strength_mode!r}; expected {STRENGTH_MODES}")
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 1 or y.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"expected two 1-D tensors of equal length, got {x.shape}, {y.shape}")


def _route_gradient(scores: Tensor, ious: Tensor, grad_to: str) -> tuple[Tensor, Tensor]:
    """Detach the input the gradient must not reach."""
    if grad_to not in GRAD_TO:
        raise ValueError(f"unknown grad_to {grad_to!r}; expected one of {GRAD_TO}")
    if grad_to == "cls":
        return scores, ious.detach()
    if grad_to == "reg":
        return scores.detach(), ious
    return scores, ious


def _compute_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    """float32 at least (half inputs under autocast), float64 if either input is."""
    return torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)


def _per_pool(
    x: Tensor,
    y: Tensor,
    pool_index: Tensor,
    num_pools: int,
    coefficient: CorrelationFn,
    strength: float,
    strength_mode: StrengthMode,
    ddof: int,
) -> tuple[Tensor, Tensor]:
    """(rho [P], valid [P]) in the compute dtype with autocast off."""
    dtype = _compute_dtype(x, y)
    with torch.autocast(x.device.type, enabled=False):
        return coefficient(
            x.to(dtype),
            y.to(dtype),
            pool_index,
            num_pools,
            strength=strength,
            strength_mode=strength_mode,
            ddof=ddof,
        )


def _zero_connected(*tensors: Tensor) -> Tensor:
    """A 0-dim zero that depends on ``tensors`` (so ``backward`` reaches them with 0)."""
    dtype = _compute_dtype(tensors[0], tensors[-1])
    return sum((t.to(dtype).sum() * 0 for t in tensors), tensors[0].new_zeros((), dtype=dtype))


def correlation_coefficient(
    x: Tensor,
    y: Tensor,
    kind: str = "concordance",
    *,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
) -> Tensor:
    """ρ of ``x`` and ``y`` ([n] each) as a 0-dim tensor; NaN where undefined (n < 2 or a
    constant input). Differentiable in both inputs; meant for logging."""
    _check_pair(x, y)
    _check_options(kind, strength, strength_mode, ddof)
    pool_index = torch.zeros(x.numel(), dtype=torch.long, device=x.device)
    coefficient = CORRELATIONS[kind]
    rho, valid = _per_pool(x, y, pool_index, 1, coefficient, strength, strength_mode, ddof)
    return torch.where(valid, rho, math.nan)[0]


def correlation_loss(
    scores: Tensor,
    ious: Tensor,
    kind: str = "concordance",
    *,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
    grad_to: GradTo = "cls",
) -> Tensor:
    """``1 − ρ(scores, ious)`` over one pool of positives, a 0-dim tensor in [0, 2].

    Args:
        scores: [n] predicted probability of each positive's ground-truth class.
        ious: [n] IoU of each positive's decoded box with its ground truth.
        kind: ``"pearson"``, ``"concordance"`` or ``"spearman"``.
        strength: soft-rank ε (``absolute``) or its multiple of the mean neighbour gap
            (``relative``); Spearman only.
        ddof: 0 population moments, 1 unbiased (the reference code); concordance only.
        grad_to: ``"cls"`` detaches ``ious`` (SPEC: the IoU is detached by default),
            ``"reg"`` detaches ``scores``, ``"both"`` neither.

    Returns 0 exactly (graph connected, zero gradient) when n < 2 or an input is constant.
    Computed in float32 at least; the result has that dtype.
    """
    _check_pair(scores, ious)
    _check_options(kind, strength, strength_mode, ddof)
    scores, ious = _route_gradient(scores, ious, grad_to)
    pool_index = torch.zeros(scores.numel(), dtype=torch.long, device=scores.device)
    coefficient = CORRELATIONS[kind]
    rho, valid = _per_pool(scores, ious, pool_index, 1, coefficient, strength, strength_mode, ddof)
    if scores.numel() == 0:
        return _zero_connected(scores, ious)
    return torch.where(valid, 1 - rho, 0.0)[0]


@dataclass(frozen=True)
class CorrelationOutput:
    """What :func:`pooled_correlation_loss` returns."""

    loss: Tensor  # 0-dim: mean over valid pools of 1 − ρ; 0 (graph connected) if none
    coefficient: float  # mean ρ over valid pools, for logging; nan if none
    num_pools: int  # pools considered (all workers' when synced)
    num_skipped: int  # pools with < 2 members or a constant input (loss 0 for them)


def _distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is absent or not initialized."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _gather_from_all_ranks(
    scores: Tensor,
    ious: Tensor,
    pool_ids: Tensor,
    num_pools: int | None,
    rank_local_ids: bool,
) -> tuple[Tensor, Tensor, Tensor, int | None]:
    """Concatenate every rank's positives in rank order, with gradient (see the docstring of
    :func:`pooled_correlation_loss` for why the gradient is then right)."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    rank, world = _distributed_world()
    device = scores.device
    counts_local = torch.tensor([scores.numel()], device=device)
    counts_all = [torch.zeros_like(counts_local) for _ in range(world)]
    dist.all_gather(counts_all, counts_local)
    counts = [int(c) for c in torch.cat(counts_all).tolist()]

    if rank_local_ids:  # make every rank's ids distinct: rank r uses [r·stride, (r+1)·stride)
        if num_pools is None:
            local_max = pool_ids.max() if pool_ids.numel() else pool_ids.new_tensor(-1)
            global_max = local_max.reshape(1).clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
            stride = int(global_max.item()) + 1
        else:
            stride = num_pools
            num_pools = num_pools * world
        pool_ids = pool_ids + rank * stride

    # all_gather needs equal shapes: pad to the largest rank, then drop the padding.
    padding = max(counts) - scores.numel()
    scores_all = all_gather(F.pad(scores, (0, padding)))
    ious_all = all_gather(F.pad(ious, (0, padding)))
    ids_padded = F.pad(pool_ids, (0, padding))
    ids_all = [torch.empty_like(ids_padded) for _ in range(world)]
    dist.all_gather(ids_all, ids_padded)  # integer ids need no gradient
    return (
        torch.cat([t[:c] for t, c in zip(scores_all, counts)]),
        torch.cat([t[:c] for t, c in zip(ious_all, counts)]),
        torch.cat([t[:c] for t, c in zip(ids_all, counts)]),
        num_pools,
    )


def pooled_correlation_loss(
    scores: Tensor,
    ious: Tensor,
    pool_ids: Tensor | None = None,
    *,
    kind: str = "concordance",
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
    grad_to: GradTo = "cls",
    num_pools: int | None = None,
    rank_local_ids: bool = False,
    sync: bool = False,
) -> CorrelationOutput:
    """Correlation loss over pools of positives: mean over non-skipped pools of ``1 − ρ``.

    Args:
        scores: [n] predicted probability of each positive's ground-truth class.
        ious: [n] IoU of each positive's decoded box with its ground truth.
        pool_ids: [n] int, the pool of each positive (FPN level index, or image index);
            None: one pool holding the whole batch.
        kind, strength, strength_mode, ddof: see :func:`correlation_loss`.
        grad_to: ``"cls"`` detaches the IoUs (default; the thesis' best), ``"reg"`` detaches
            the scores, ``"both"`` detaches nothing.
        num_pools: if given, ids lie in ``[0, num_pools)`` and empty pools count as skipped
            (e.g. 5 FPN levels); if None, the pools are the distinct ids present.
        rank_local_ids: under ``sync``, True means ids name rank-local groups (the image index
            within the worker's batch): rank r's ids are offset by ``r × stride``, stride =
            ``num_pools`` if given, else 1 + the largest id on any rank (an all_reduce max),
            so each worker's images stay separate pools. False (default) means ids name the
            same group on every rank (FPN levels; the batch pool): level k of every worker
            forms one pool. Callers using image pools must pass True.
        sync: under an initialized torch.distributed with world size > 1, gather every
            rank's positives first so that W workers × B images compute the loss of 1 × W·B.
            A no-op otherwise.

    Why the DDP gradient then equals the single-process gradient: every rank computes the
    same loss L over the gathered positives. ``torch.distributed.nn.functional.all_gather``
    back-propagates by summing, over ranks, the gradient each rank's L sends to a rank's
    slice, so rank k's local scores receive ``W · ∂L/∂s_k``. DDP then averages parameter
    gradients over the W ranks: ``(1/W) Σ_k W · ∂L/∂s_k · ∂s_k/∂θ = Σ_k ∂L/∂s_k · ∂s_k/∂θ``,
    which is exactly ``dL/dθ`` of one process holding all W·B images. (Without the
    autograd-aware gather, each rank would only back-propagate its own slice and the
    gradient would be 1/W of it.) The other ranks' positives are computed identically on
    every rank, so every rank must call this with ``sync=True`` in the same iteration.

    Returns :class:`CorrelationOutput`; its ``coefficient`` and counts synchronize with the
    device once (they are logged every iteration).
    """
    _check_options(kind, strength, strength_mode, ddof)
    return pooled_correlation(
        scores,
        ious,
        pool_ids,
        coefficient=CORRELATIONS[kind],
        strength=strength,
        strength_mode=strength_mode,
        ddof=ddof,
        grad_to=grad_to,
        num_pools=num_pools,
        rank_local_ids=rank_local_ids,
        sync=sync,
    )


def pooled_correlation(
    scores: Tensor,
    ious: Tensor,
    pool_ids: Tensor | None = None,
    *,
    coefficient: CorrelationFn,
    strength: float = 1.0,
    strength_mode: StrengthMode = "absolute",
    ddof: int = 0,
    grad_to: GradTo = "cls",
    num_pools: int | None = None,
    rank_local_ids: bool = False,
    sync: bool = False,
) -> CorrelationOutput:
    """:func:`pooled_correlation_loss` with the coefficient given as a function of
    :data:`CORRELATIONS` rather than by name (what :class:`CorrelationLoss` calls)."""
    _check_pair(scores, ious)
    _check_strength_and_ddof(strength, strength_mode, ddof)
    scores, ious = _route_gradient(scores, ious, grad_to)

    if pool_ids is None:
        pool_ids = torch.zeros(scores.numel(), dtype=torch.long, device=scores.device)
        num_pools, rank_local_ids = 1, False
    elif pool_ids.shape != scores.shape:
        raise ValueError(f"pool_ids {pool_ids.shape} must match scores {scores.shape}")
    pool_ids = pool_ids.long()

    if sync and _distributed_world()[1] > 1:
        scores, ious, pool_ids, num_pools = _gather_from_all_ranks(
            scores, ious, pool_ids, num_pools, rank_local_ids
        )

    if num_pools is None:
        unique_ids, pool_index = torch.unique(pool_ids, return_inverse=True)
        num_pools = unique_ids.numel()
    else:
        pool_index = pool_ids

    rho, valid = _per_pool(
        scores, ious, pool_index, num_pools, coefficient, strength, strength_mode, ddof
    )
    num_valid = valid.sum()
    loss = torch.where(valid, 1 - rho, 0.0).sum() / num_valid.clamp(min=1)
    if scores.numel() == 0:
        loss = loss + _zero_connected(scores, ious)  # keeps the graph whole with no positives
    stats = torch.stack([num_valid.to(rho.dtype), torch.where(valid, rho, 0.0).sum()])
    valid_count, rho_sum = stats.detach().tolist()  # one device sync for the logged numbers
    return CorrelationOutput(
        loss=loss,
        coefficient=rho_sum / valid_count if valid_count else math.nan,
        num_pools=num_pools,
        num_skipped=num_pools - int(valid_count),
    )


Pool = Literal["batch", "level", "image"]


@dataclass(frozen=True, kw_only=True)
class CorrelationLoss:
    """The correlation slot's object: ``weight · (1 − ρ(s, IoU))`` over pools of positives.

    ``loss(scores, ious, *, image_ids, num_images, level_ids=None, num_levels=None) ->
    (weighted loss or None, CorrelationOutput)``: scores [P] (probability of each positive's
    ground-truth class) and ious [P] (IoU of its decoded box with its ground truth), the
    image [P] and FPN level [P] of each positive, and how many images and levels there are.
    ``pool`` picks which of them share a coefficient (``batch``: all). At ``weight == 0``
    nothing is trained: ρ is computed without gradient (it is still logged) and the loss is
    None. Level pools need ``level_ids`` (heads without FPN levels refuse them).
    """

    coefficient: CorrelationFn  # one of CORRELATIONS
    weight: float  # λ_corr
    pool: Pool = "batch"
    strength: float = 1.0  # spearman: soft-rank ε (absolute) or its multiple (relative)
    strength_mode: StrengthMode = "absolute"
    ddof: int = 0  # concordance: 0 population, 1 unbiased moments
    grad_to: GradTo = "cls"  # which input the gradient reaches (weight > 0 only)
    sync: bool = False  # pool across DDP workers (weight > 0 only)

    def __call__(
        self,
        scores: Tensor,
        ious: Tensor,
        *,
        image_ids: Tensor,
        num_images: int,
        level_ids: Tensor | None = None,
        num_levels: int | None = None,
    ) -> tuple[Tensor | None, CorrelationOutput]:
        if self.pool == "level" and level_ids is None:
            raise ValueError("pool='level' needs the positives' FPN levels")
        pool_ids = {"batch": None, "level": level_ids, "image": image_ids}[self.pool]
        num_pools = {"batch": None, "level": num_levels, "image": num_images}[self.pool]
        options: dict[str, Any] = {
            "coefficient": self.coefficient,
            "strength": self.strength,
            "strength_mode": self.strength_mode,
            "ddof": self.ddof,
            "num_pools": num_pools,
            # Level ids mean the same on every DDP worker; image ids are local to each.
            "rank_local_ids": self.pool == "image",
        }
        if self.weight == 0:
            with torch.no_grad():
                return None, pooled_correlation(scores.float(), ious.float(), pool_ids, **options)
        out = pooled_correlation(
            scores, ious, pool_ids, grad_to=self.grad_to, sync=self.sync, **options
        )
        return self.weight * out.loss, out
