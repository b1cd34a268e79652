"""Correlation Loss: coefficients against scipy / NumPy, guards, gradient routing, the
Spearman collapse, pooling, and cross-worker pooling under a real 2-process gloo group."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

# torchsort is part of the install (scripts/setup.sh builds it): missing, these tests fail.
import torchsort

from detectors.losses.correlation import (
    CORRELATIONS,
    CorrelationOutput,
    correlation_coefficient,
    correlation_loss,
    pooled_correlation_loss,
)

KINDS = sorted(CORRELATIONS)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def np_concordance(x: np.ndarray, y: np.ndarray, ddof: int = 0) -> float:
    """Lin's concordance correlation coefficient, written out from the 1989 definition."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    cov = ((x - x.mean()) * (y - y.mean())).sum() / (n - ddof)
    return float(2 * cov / (x.var(ddof=ddof) + y.var(ddof=ddof) + (x.mean() - y.mean()) ** 2))


def reference_coefficient(x: torch.Tensor, y: torch.Tensor, kind: str, ddof: int = 0) -> float:
    import scipy.stats  # here, not at the top: the spawned sync workers import this module

    xa, ya = x.detach().double().numpy(), y.detach().double().numpy()
    if kind == "pearson":
        return float(scipy.stats.pearsonr(xa, ya)[0])
    if kind == "concordance":
        return np_concordance(xa, ya, ddof)
    return float(scipy.stats.spearmanr(xa, ya)[0])


def random_pair(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and IoUs in [0, 1], positively but nonlinearly related (Pearson ≠ Spearman)."""
    gen = torch.Generator().manual_seed(seed)
    ious = torch.rand(n, generator=gen, dtype=torch.float64) * 0.6 + 0.4
    scores = (ious**6 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return scores.to(dtype), ious.to(dtype)


def grid_pair(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values on a grid with repeats: exact ties, and every other gap at least one step, so
    soft ranks at a small relative strength are exactly scipy's average ranks."""
    gen = torch.Generator().manual_seed(seed)
    steps_x = torch.randint(0, n // 2 + 1, (n,), generator=gen)
    steps_y = steps_x + torch.randint(0, 3, (n,), generator=gen)  # integers: ties are exact
    return steps_x.to(dtype) / n, steps_y.to(dtype) / (n + 3)


# --- coefficients against scipy / NumPy -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [2, 3, 17, 500])
@pytest.mark.parametrize("kind", ["pearson", "concordance"])
def test_moment_coefficients_match_reference(kind: str, n: int, dtype: torch.dtype) -> None:
    for seed in range(3):
        scores, ious = random_pair(n, dtype, seed)
        expected = reference_coefficient(scores, ious, kind)
        rho = correlation_coefficient(scores, ious, kind)
        assert rho.dtype == dtype
        assert rho.item() == pytest.approx(expected, abs=TOL[dtype])
        loss = correlation_loss(scores, ious, kind)
        assert loss.item() == pytest.approx(1 - expected, abs=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_concordance_unbiased_moments_match_reference_code(dtype: torch.dtype) -> None:
    scores, ious = random_pair(40, dtype, 0)
    unbiased = correlation_coefficient(scores, ious, "concordance", ddof=1).item()
    population = correlation_coefficient(scores, ious, "concordance", ddof=0).item()
    assert unbiased == pytest.approx(
        np_concordance(scores.numpy(), ious.numpy(), 1), abs=TOL[dtype]
    )
    # The two readings differ measurably here (the mean gap term is not rescaled), so the
    # option matters.
    assert abs(unbiased - population) > 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [5, 50, 500])
def test_spearman_small_relative_strength_is_exact_on_grid_data_with_ties(
    n: int, dtype: torch.dtype
) -> None:
    for seed in range(3):
        x, y = grid_pair(n, dtype, seed)
        assert len(set(x.tolist())) < n  # the data really has ties
        expected = reference_coefficient(x, y, "spearman")
        rho = correlation_coefficient(x, y, "spearman", strength=1e-3, strength_mode="relative")
        assert rho.item() == pytest.approx(expected, abs=TOL[dtype])


def test_hand_worked_three_points() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # x̄ = 2, ȳ = 7/3, Σdxdy = 3, Σdx² = 2, Σdy² = 14/3.
    assert correlation_coefficient(x, y, "pearson").item() == pytest.approx(
        3 / math.sqrt(28 / 3), abs=1e-12
    )
    # population: 2·1 / (2/3 + 14/9 + 1/9) = 6/7; unbiased: 2·1.5 / (1 + 7/3 + 1/9) = 27/31.
    assert correlation_coefficient(x, y, "concordance").item() == pytest.approx(6 / 7, abs=1e-12)
    assert correlation_coefficient(x, y, "concordance", ddof=1).item() == pytest.approx(
        27 / 31, abs=1e-12
    )
    # Ranks agree perfectly.
    rho = correlation_coefficient(x, y, "spearman", strength=0.1, strength_mode="relative")
    assert rho.item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("kind", "expected_loss"), [("pearson", 2.0), ("concordance", 1.96), ("spearman", 2.0)]
)
def test_two_points_reversed(kind: str, expected_loss: float) -> None:
    scores = torch.tensor([0.2, 0.8], dtype=torch.float64)
    ious = torch.tensor([0.9, 0.1], dtype=torch.float64)
    # concordance: cov = −0.12, var = 0.09 + 0.16, equal means → −0.24 / 0.25 = −0.96.
    loss = correlation_loss(scores, ious, kind, strength=0.01, strength_mode="relative")
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)


# --- contract every kind obeys ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_contract_identity_symmetry_and_range(kind: str) -> None:
    scores, ious = random_pair(64, torch.float64, 3)
    options = {"strength": 0.05, "strength_mode": "relative"}
    assert correlation_coefficient(ious, ious, kind, **options).item() == pytest.approx(1.0)
    rho_xy = correlation_coefficient(scores, ious, kind, **options).item()
    rho_yx = correlation_coefficient(ious, scores, kind, **options).item()
    assert rho_xy == pytest.approx(rho_yx, abs=1e-12)
    assert -1 <= correlation_coefficient(scores, -ious, kind, **options).item() < 0 < rho_xy <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_contract_per_pool_outputs(kind: str) -> None:
    x = torch.tensor([0.1, 0.5, 0.3, 0.7, 0.8, 0.2, 0.9], dtype=torch.float64)
    y = torch.tensor([0.2, 0.6, 0.1, 0.4, 0.8, 0.5, 0.5], dtype=torch.float64)
    pool_index = torch.tensor([0, 0, 0, 1, 1, 3, 3])  # pool 2 empty, pool 3 constant y
    rho, valid = CORRELATIONS[kind](
        x, y, pool_index, 4, strength=1.0, strength_mode="absolute", ddof=0
    )
    assert rho.shape == valid.shape == (4,)
    assert valid.tolist() == [True, True, False, False]
    assert torch.isfinite(rho).all()


# --- guards -------------------------------------------------------------------------------


GUARD_CASES = {
    "empty": ([], []),
    "single": ([0.3], [0.7]),
    "constant_scores": ([0.1, 0.1, 0.1, 0.1], [0.5, 0.6, 0.7, 0.9]),
    "constant_ious": ([0.1, 0.2, 0.3, 0.4], [0.7, 0.7, 0.7, 0.7]),
    "both_constant": ([0.3, 0.3, 0.3], [0.7, 0.7, 0.7]),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(GUARD_CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_guards_give_zero_loss_and_finite_zero_gradient(
    kind: str, case: str, dtype: torch.dtype
) -> None:
    raw_scores, raw_ious = GUARD_CASES[case]
    scores = torch.tensor(raw_scores, dtype=dtype, requires_grad=True)
    ious = torch.tensor(raw_ious, dtype=dtype, requires_grad=True)
    loss = correlation_loss(scores, ious, kind, grad_to="both")
    assert loss.dim() == 0
    assert loss.item() == 0.0
    loss.backward()
    for grad in (scores.grad, ious.grad):
        assert grad is not None and grad.shape == scores.shape
        assert torch.isfinite(grad).all() and (grad == 0).all()
    assert math.isnan(correlation_coefficient(scores, ious, kind).item())


def test_constant_float32_that_does_not_average_exactly_is_still_constant() -> None:
    # 0.1 has no exact float32 mean over 7 copies; a variance test would see noise here.
    scores = torch.full((7,), 0.1, dtype=torch.float32)
    assert (scores - scores.mean()).pow(2).sum() > 0  # the spurious variance exists
    ious = torch.linspace(0.4, 1.0, 7)
    assert correlation_loss(scores, ious, "pearson").item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_nan_input_reaches_the_loss(kind: str) -> None:
    scores = torch.tensor([0.1, float("nan"), 0.3])
    ious = torch.tensor([0.5, 0.6, 0.7])
    assert torch.isnan(correlation_loss(scores, ious, kind))


def test_bad_arguments_raise() -> None:
    scores, ious = random_pair(5, torch.float32, 0)
    with pytest.raises(ValueError, match="kind"):
        correlation_loss(scores, ious, "kendall")
    with pytest.raises(ValueError, match="equal length"):
        correlation_loss(scores, ious[:4])
    with pytest.raises(ValueError, match="strength_mode"):
        correlation_loss(scores, ious, "spearman", strength_mode="auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_to"):
        pooled_correlation_loss(scores, ious, grad_to="box")  # type: ignore[arg-type]


# --- gradient routing ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("grad_to", "to_scores", "to_ious"),
    [("cls", True, False), ("reg", False, True), ("both", True, True)],
)
def test_gradient_routing(kind: str, grad_to: str, to_scores: bool, to_ious: bool) -> None:
    base_scores, base_ious = random_pair(30, torch.float64, 1)
    for front_end in ("single", "pooled"):
        scores = base_scores.clone().requires_grad_()
        ious = base_ious.clone().requires_grad_()
        if front_end == "single":
            loss = correlation_loss(scores, ious, kind, grad_to=grad_to)  # type: ignore[arg-type]
        else:
            loss = pooled_correlation_loss(scores, ious, kind=kind, grad_to=grad_to).loss  # type: ignore[arg-type]
        loss.backward()
        assert (scores.grad is not None and scores.grad.abs().sum() > 0) == to_scores
        assert (ious.grad is not None and ious.grad.abs().sum() > 0) == to_ious


def test_default_gradient_reaches_scores_only() -> None:
    scores, ious = random_pair(30, torch.float32, 2)
    scores.requires_grad_()
    ious.requires_grad_()
    correlation_loss(scores, ious).backward()
    assert ious.grad is None
    assert scores.grad is not None and scores.grad.abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_finite_differences(kind: str) -> None:
    scores, ious = random_pair(12, torch.float64, 4)
    # Absolute ε: a relative ε is detached by design, which finite differences would see.
    options = {"strength": 0.05, "strength_mode": "absolute"}

    def loss_of(s: torch.Tensor) -> torch.Tensor:
        return correlation_loss(s, ious, kind, **options)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(loss_of, (scores.clone().requires_grad_(),), atol=1e-6)


# --- the Spearman collapse and the relative strength --------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [5, 50, 500])
def test_spearman_at_absolute_strength_one_is_pearson(n: int, dtype: torch.dtype) -> None:
    base_scores, ious = random_pair(n, dtype, n)
    grads, losses = {}, {}
    for kind in ("spearman", "pearson"):
        scores = base_scores.clone().requires_grad_()
        losses[kind] = correlation_loss(scores, ious, kind, strength=1.0)
        losses[kind].backward()
        grads[kind] = scores.grad
    assert losses["spearman"].item() == pytest.approx(losses["pearson"].item(), abs=TOL[dtype])
    # float32: the soft ranks carry an offset of about n/2, which costs ~1e-6 relative.
    grad_tol = 1e-12 if dtype == torch.float64 else 1e-4 * grads["pearson"].abs().max().item()
    assert (grads["spearman"] - grads["pearson"]).abs().max().item() < grad_tol
    # ... while true Spearman is far from Pearson on this data: the collapse is not benign.
    true_spearman = reference_coefficient(base_scores, ious, "spearman")
    assert abs((1 - losses["spearman"].item()) - true_spearman) > 0.02


@pytest.mark.parametrize("n", [5, 50, 500])
def test_relative_strength_tracks_true_spearman_at_every_pool_size(n: int) -> None:
    for seed in range(3):
        scores, ious = random_pair(n, torch.float64, 100 * n + seed)
        expected = reference_coefficient(scores, ious, "spearman")
        rho = correlation_coefficient(
            scores, ious, "spearman", strength=0.01, strength_mode="relative"
        )
        assert rho.item() == pytest.approx(expected, abs=2e-3)


def test_absolute_small_strength_collapses_at_large_n_but_relative_does_not() -> None:
    scores, ious = random_pair(500, torch.float64, 7)
    expected = reference_coefficient(scores, ious, "spearman")
    pearson = reference_coefficient(scores, ious, "pearson")
    absolute = correlation_coefficient(scores, ious, "spearman", strength=0.01).item()
    relative = correlation_coefficient(
        scores, ious, "spearman", strength=0.01, strength_mode="relative"
    ).item()
    assert abs(absolute - pearson) < abs(absolute - expected)  # SPEC: ε = 0.01 collapses at 500
    assert abs(relative - expected) < 2e-3


def test_relative_strength_is_invariant_to_affine_rescaling_absolute_is_not() -> None:
    scores, ious = random_pair(80, torch.float64, 8)
    kwargs = {"kind": "spearman", "strength": 1.0}
    relative = correlation_coefficient(scores, ious, strength_mode="relative", **kwargs)
    relative_scaled = correlation_coefficient(
        0.05 * scores + 0.3, ious, strength_mode="relative", **kwargs
    )
    assert relative_scaled.item() == pytest.approx(relative.item(), abs=1e-10)
    absolute = correlation_coefficient(scores * 100, ious * 100, **kwargs)
    absolute_scaled = correlation_coefficient(scores, ious, **kwargs)
    assert abs(absolute.item() - absolute_scaled.item()) > 1e-3


# --- precision and devices ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_computes_in_float32(kind: str) -> None:
    scores, ious = random_pair(200, torch.float32, 9)
    scores_bf16, ious_bf16 = scores.bfloat16(), ious.bfloat16()
    expected = correlation_loss(scores_bf16.float(), ious_bf16.float(), kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = correlation_loss(scores_bf16, ious_bf16, kind)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind: str) -> None:
    """Forward and backward on the device equal the CPU's (Spearman: torchsort's CUDA
    extension against its CPU one)."""
    scores, ious = random_pair(300, torch.float32, 10)
    pool_ids = torch.arange(300) % 5
    losses, grads = [], []
    for device in ("cpu", "cuda"):
        x = scores.to(device).requires_grad_()
        out = pooled_correlation_loss(
            x, ious.to(device), pool_ids.to(device), kind=kind, strength_mode="relative"
        )
        out.loss.backward()
        assert x.grad is not None and x.grad.device.type == device
        losses.append(out.loss.item())
        grads.append(x.grad.cpu())
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert grads[0].abs().sum() > 0  # or the comparison below could not fail
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
def test_torchsort_cuda_extension_is_built() -> None:
    """scripts/setup.sh builds it where a GPU and nvcc are present; without it torchsort
    raises on the first CUDA tensor (Spearman would fail at the first training step)."""
    import torchsort.isotonic_cuda  # the compiled extension: ImportError where it is absent

    values = torch.tensor([[0.3, 0.1, 0.2, 0.9], [1.0, -1.0, 0.5, 0.0]])
    cpu = torchsort.soft_rank(values, regularization_strength=0.01)
    gpu = torchsort.soft_rank(values.cuda(), regularization_strength=0.01)
    torch.testing.assert_close(gpu.cpu(), cpu)
    assert cpu[0].tolist() == pytest.approx([3.0, 1.0, 2.0, 4.0])  # hard ranks at small ε


# --- pooling ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_loss_is_the_mean_of_per_pool_losses(kind: str) -> None:
    scores, ious = random_pair(60, torch.float64, 11)
    gen = torch.Generator().manual_seed(0)
    level_ids = torch.randint(0, 5, (60,), generator=gen)  # interleaved, not sorted
    options = {"strength": 0.3, "strength_mode": "relative"}
    out = pooled_correlation_loss(scores, ious, level_ids, kind=kind, **options)  # type: ignore[arg-type]
    per_pool = [
        correlation_loss(scores[level_ids == k], ious[level_ids == k], kind, **options)  # type: ignore[arg-type]
        for k in range(5)
    ]
    assert isinstance(out, CorrelationOutput)
    assert out.loss.item() == pytest.approx(torch.stack(per_pool).mean().item(), abs=1e-12)
    assert out.coefficient == pytest.approx(1 - torch.stack(per_pool).mean().item(), abs=1e-12)
    assert (out.num_pools, out.num_skipped) == (5, 0)
    batch = pooled_correlation_loss(scores, ious, kind=kind, **options)  # type: ignore[arg-type]
    assert batch.loss.item() == pytest.approx(
        correlation_loss(scores, ious, kind, **options).item()
    )  # type: ignore[arg-type]
    assert abs(batch.loss.item() - out.loss.item()) > 1e-4  # pooling changes the loss


@pytest.mark.parametrize(
    ("strength", "strength_mode"), [(1.0, "absolute"), (1e-3, "absolute"), (0.05, "relative")]
)
def test_spearman_one_pass_over_uneven_pools_equals_ranking_each_pool_alone(
    strength: float, strength_mode: str
) -> None:
    # Pools of 1, 2, 7, 300 members and an empty one, interleaved: the one-call padded
    # ranking must reproduce per-pool ranking in value and gradient.
    sizes = {0: 7, 1: 300, 3: 1, 4: 2}
    gen = torch.Generator().manual_seed(12)
    ids = torch.cat([torch.full((size,), pool) for pool, size in sizes.items()])
    ids = ids[torch.randperm(len(ids), generator=gen)]
    base_scores, ious = random_pair(len(ids), torch.float64, 12)
    options = {"kind": "spearman", "strength": strength, "strength_mode": strength_mode}
    scores = base_scores.clone().requires_grad_()
    out = pooled_correlation_loss(scores, ious, ids, num_pools=5, **options)  # type: ignore[arg-type]
    out.loss.backward()
    per_pool_scores = base_scores.clone().requires_grad_()
    per_pool = [
        correlation_loss(per_pool_scores[ids == k], ious[ids == k], **options)  # type: ignore[arg-type]
        for k in (0, 1, 4)
    ]
    torch.stack(per_pool).mean().backward()
    assert (out.num_pools, out.num_skipped) == (5, 2)
    assert out.loss.item() == pytest.approx(torch.stack(per_pool).mean().item(), abs=1e-12)
    assert scores.grad is not None and per_pool_scores.grad is not None
    torch.testing.assert_close(scores.grad, per_pool_scores.grad, rtol=0, atol=1e-12)


def test_absolute_spearman_is_the_reference_computation() -> None:
    """The reference code's spearmanr(): soft ranks at ε, centred, normalised, dotted."""
    scores, ious = random_pair(200, torch.float32, 13)
    for eps in (1.0, 0.01, 1e-4):
        ranks = [
            torchsort.soft_rank(v[None], regularization_strength=eps)[0] for v in (scores, ious)
        ]
        centred = [r - r.mean() for r in ranks]
        normed = [c / c.norm() for c in centred]
        expected = 1 - (normed[0] * normed[1]).sum()
        got = correlation_loss(scores, ious, "spearman", strength=eps)
        assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_pooled_skips_small_and_constant_pools() -> None:
    scores = torch.tensor([0.1, 0.4, 0.3, 0.9, 0.2, 0.2, 0.5, 0.6, 0.7], dtype=torch.float64)
    ious = torch.tensor([0.5, 0.8, 0.6, 0.7, 0.6, 0.9, 0.8, 0.4, 0.5], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 4])  # 1: single, 2: constant scores, 3: empty
    out = pooled_correlation_loss(scores, ious, ids, kind="pearson")
    expected = [correlation_loss(scores[ids == k], ious[ids == k], "pearson") for k in (0, 4)]
    assert out.loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-12)
    assert (out.num_pools, out.num_skipped) == (4, 2)  # pools are the ids present
    declared = pooled_correlation_loss(scores, ious, ids, kind="pearson", num_pools=5)
    assert (declared.num_pools, declared.num_skipped) == (5, 3)  # the empty level counts
    assert declared.loss.item() == pytest.approx(out.loss.item(), abs=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_all_skipped_is_zero_with_nan_coefficient(kind: str) -> None:
    for n in (0, 1, 4):
        scores = torch.full((n,), 0.5, requires_grad=True)
        ious = torch.linspace(0.5, 0.9, n)
        out = pooled_correlation_loss(scores, ious, kind=kind)
        assert out.loss.item() == 0.0 and math.isnan(out.coefficient)
        assert (out.num_pools, out.num_skipped) == (1, 1)
        out.loss.backward()
        assert scores.grad is not None and (scores.grad == 0).all()


# --- cross-worker pooling: 2 gloo processes with DDP vs one process -----------------------

IMAGES, FEATURES, WORLD = 8, 3, 2
SYNC_CASES = [
    ("pearson", "batch"),
    ("concordance", "level"),
    ("concordance", "image"),
    ("spearman", "image_declared"),
    ("spearman_relative", "level"),
]


def _sync_data() -> dict[str, torch.Tensor]:
    """A fixed batch of IMAGES images with uneven positive counts (one image has none)."""
    gen = torch.Generator().manual_seed(123)
    counts = torch.tensor([5, 3, 0, 7, 4, 6, 2, 5])
    image_ids = torch.repeat_interleave(torch.arange(IMAGES), counts)
    n = int(counts.sum())
    return {
        "features": torch.randn(n, FEATURES, generator=gen, dtype=torch.float64),
        "ious": torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.5,
        "level_ids": torch.randint(0, 5, (n,), generator=gen),
        "image_ids": image_ids,
    }


def _sync_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, 1).double()


def _case_loss(
    model: torch.nn.Module,
    data: dict[str, torch.Tensor],
    kind_name: str,
    pool: str,
    *,
    sync: bool,
    image_offset: int,
    num_images: int,
) -> CorrelationOutput:
    kind = "spearman" if kind_name.startswith("spearman") else kind_name
    mode = "relative" if kind_name == "spearman_relative" else "absolute"
    scores = torch.sigmoid(model(data["features"])).squeeze(-1)
    pool_ids = {
        "batch": None,
        "level": data["level_ids"],
        "image": data["image_ids"] - image_offset,  # rank-local image index
        "image_declared": data["image_ids"] - image_offset,
    }[pool]
    return pooled_correlation_loss(
        scores,
        data["ious"],
        pool_ids,
        kind=kind,
        strength=0.5 if mode == "relative" else 1.0,
        strength_mode=mode,  # type: ignore[arg-type]
        num_pools=num_images if pool == "image_declared" else None,
        rank_local_ids=pool.startswith("image"),
        sync=sync,
    )


def _sync_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = _sync_data()
        half = IMAGES // WORLD
        mine = (data["image_ids"] >= rank * half) & (data["image_ids"] < (rank + 1) * half)
        local = {key: value[mine] for key, value in data.items()}
        model = DistributedDataParallel(_sync_model())
        results = {}
        for kind_name, pool in SYNC_CASES:
            for sync in (True, False):
                model.zero_grad()
                out = _case_loss(
                    model,
                    local,
                    kind_name,
                    pool,
                    sync=sync,
                    image_offset=rank * half,
                    num_images=half,
                )
                out.loss.backward()
                results[(kind_name, pool, sync)] = {
                    "loss": out.loss.detach(),
                    "grads": [p.grad.clone() for p in model.parameters()],  # DDP-averaged
                    "num_pools": out.num_pools,
                    "num_skipped": out.num_skipped,
                }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_two_workers_equal_one_process_with_the_full_batch(tmp_path: Path) -> None:
    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    data = _sync_data()
    for kind_name, pool in SYNC_CASES:
        model = _sync_model()
        full = _case_loss(
            model, data, kind_name, pool, sync=False, image_offset=0, num_images=IMAGES
        )
        full.loss.backward()
        full_grads = [p.grad for p in model.parameters()]
        for results in per_rank:
            synced = results[(kind_name, pool, True)]
            assert synced["loss"].item() == pytest.approx(full.loss.item(), abs=1e-12)
            for got, want in zip(synced["grads"], full_grads):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
            assert (synced["num_pools"], synced["num_skipped"]) == (
                full.num_pools,
                full.num_skipped,
            )
        # Without sync each worker sees its own half: a different loss (the test can fail).
        unsynced = [results[(kind_name, pool, False)]["loss"].item() for results in per_rank]
        assert any(abs(loss - full.loss.item()) > 1e-6 for loss in unsynced)
