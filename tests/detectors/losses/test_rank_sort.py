"""Rank & Sort Loss: values and identity-update gradients against a plain loop of the
paper's Algorithm 1, by hand, at ties and edge cases, chunked vs unchunked, and the
RS-Net box-loss balance."""

from __future__ import annotations

import cls_loss_refs as ref
import numpy as np
import pytest
import torch

from detectors.losses import (
    CLASSIFICATION_LOSSES,
    ElementwiseClassificationLoss,
    RankSortLoss,
    rank_sort_loss,
    rs_box_loss,
)

RTOL = 1e-12


def updates(
    logits: torch.Tensor, targets: torch.Tensor, **options: float
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(ranking, sorting, U_rank, U_sort)``: each update is the gradient of one output."""
    x = logits.detach().clone().requires_grad_()
    ranking, sorting = rank_sort_loss(x, targets, **options)  # type: ignore[arg-type]
    (u_rank,) = torch.autograd.grad(ranking, x, retain_graph=True)
    (u_sort,) = torch.autograd.grad(sorting, x)
    return ranking.item(), sorting.item(), u_rank.numpy(), u_sort.numpy()


def check_against_loop(logits: torch.Tensor, targets: torch.Tensor, delta: float = 0.5) -> None:
    ranking, sorting, u_rank, u_sort = updates(logits, targets, delta=delta)
    loop = ref.rank_sort_loop(logits.tolist(), targets.tolist(), delta)
    assert ranking == pytest.approx(loop[0], rel=RTOL, abs=1e-15)
    assert sorting == pytest.approx(loop[1], rel=RTOL, abs=1e-15)
    np.testing.assert_allclose(u_rank, loop[2], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(u_sort, loop[3], rtol=1e-10, atol=1e-15)


def random_case(
    seed: int, num: int = 60, pos_frac: float = 0.2, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num, generator=gen, dtype=torch.float64) * 1.5
    ious = torch.rand(num, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    positive = torch.rand(num, generator=gen) < pos_frac
    positive[0] = True
    targets = torch.where(positive, ious, 0.0)
    logits = logits + positive * 1.0  # positives score higher on average, not always
    return logits.to(dtype), targets.to(dtype)


def test_hand_worked_case() -> None:
    """δ = 0.5, so H(x) = clamp(x + 0.5, 0, 1). Positives a (s 2, IoU .5) and b (s 1, IoU
    .9) are mis-sorted; negative n (s 1.5) sits between them.

    a: rank⁺ = H(0) = .5 (b is 1 below: H = 0), N_FP = H(−.5) = 0 → ℓ_R = 0, ℓ_S = ℓ*_S.
    b: rank⁺ = H(1) + H(0) = 1.5, N_FP = H(.5) = 1 → ℓ_R = 1 / 2.5 = .4;
       ℓ_S = (1·(1 − .5) + .5·(1 − .9)) / 1.5, ℓ*_S (only b has IoU ≥ .9) = .1.
    Updates / |P| = 2: b gets −.4/2 (rank) and −err/2 (sort); n gets +.4/2; a, the only
    mis-sorted positive above b, gets +err/2.
    """
    logits = torch.tensor([2.0, 1.0, 1.5], dtype=torch.float64)
    targets = torch.tensor([0.5, 0.9, 0.0], dtype=torch.float64)
    err = 0.55 / 1.5 - 0.1
    ranking, sorting, u_rank, u_sort = updates(logits, targets)
    assert ranking == pytest.approx(0.4 / 2, rel=RTOL)
    assert sorting == pytest.approx(err / 2, rel=RTOL)
    np.testing.assert_allclose(u_rank, [0.0, -0.2, 0.2], rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(u_sort, [err / 2, -err / 2, 0.0], rtol=RTOL, atol=1e-15)


def test_correctly_sorted_positives_have_no_sorting_error() -> None:
    logits = torch.tensor([2.0, 1.0, 1.5], dtype=torch.float64)
    targets = torch.tensor([0.9, 0.5, 0.0], dtype=torch.float64)  # the IoUs of above swapped
    ranking, sorting, _, u_sort = updates(logits, targets)
    assert ranking == pytest.approx(0.2, rel=RTOL)
    assert sorting == 0.0
    assert not u_sort.any()


@pytest.mark.parametrize("delta", [0.5, 0.1, 1.0, 0.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_loop_on_random_cases(seed: int, delta: float) -> None:
    check_against_loop(*random_case(seed), delta=delta)


@pytest.mark.parametrize("delta", [0.5, 0.0])
def test_ties_among_logits_and_ious(delta: float) -> None:
    """Integer logits on a half-δ grid (exact differences of 0 and ±δ, the clamp's
    corners) and IoUs from four values: many exact ties of every kind."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randint(-3, 4, (40,), generator=gen).double() * 0.25
    ious = torch.tensor([0.5, 0.7, 0.7, 0.9], dtype=torch.float64)
    ious = ious[torch.randint(0, 4, (40,), generator=gen)]
    targets = torch.where(torch.rand(40, generator=gen) < 0.4, ious, 0.0)
    check_against_loop(logits, targets, delta=delta)


def test_tied_positives_count_each_other_half() -> None:
    """Two positives with one logit and one IoU, no negatives: rank⁺ = .5 + .5 each, no
    error of either kind."""
    logits = torch.tensor([0.3, 0.3], dtype=torch.float64)
    targets = torch.tensor([0.6, 0.6], dtype=torch.float64)
    ranking, sorting, u_rank, u_sort = updates(logits, targets)
    assert (ranking, sorting) == (0.0, 0.0)
    assert not u_rank.any() and not u_sort.any()
    # a tied negative counts half a false positive: ℓ_R = .5 / (.5 + .5 + .5) for both
    logits3 = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    targets3 = torch.tensor([0.6, 0.6, 0.0], dtype=torch.float64)
    assert updates(logits3, targets3)[0] == pytest.approx(1 / 3, rel=RTOL)


def test_single_positive() -> None:
    logits = torch.tensor([0.0, 0.2, -0.3, -2.0, 5.0], dtype=torch.float64)
    targets = torch.tensor([0.8, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    ranking, sorting, u_rank, u_sort = updates(logits, targets)
    num_fp = 0.7 + 0.2 + 0.0 + 1.0  # H(.2), H(−.3), H(−2), H(5)
    assert ranking == pytest.approx(num_fp / (0.5 + num_fp), rel=RTOL)
    expected = np.array([-num_fp, 0.7, 0.2, 0.0, 1.0]) / (0.5 + num_fp)  # H(x_ij) / rank(i)
    np.testing.assert_allclose(u_rank, expected, rtol=RTOL, atol=1e-15)
    assert sorting == 0.0 and not u_sort.any()
    check_against_loop(logits, targets)


def test_no_negative_within_delta_of_the_positives() -> None:
    logits, targets = random_case(11, num=30, pos_frac=0.4)
    positive = targets > 0
    logits = torch.where(positive, logits, logits[positive].min() - 0.5 - torch.rand(30))
    ranking, sorting, u_rank, _ = updates(logits, targets)
    assert ranking == 0.0 and not u_rank.any()
    assert sorting > 0  # the positives are still unsorted
    check_against_loop(logits, targets)


@pytest.mark.parametrize("num", [0, 5])
def test_no_positives_gives_zero_loss_and_zero_gradient(num: int) -> None:
    logits = torch.randn(num, dtype=torch.float64, requires_grad=True)
    ranking, sorting = rank_sort_loss(logits, torch.zeros(num, dtype=torch.float64))
    assert ranking.item() == 0.0 and sorting.item() == 0.0
    (ranking + sorting).backward()
    assert logits.grad is not None
    assert logits.grad.shape == (num,) and not logits.grad.any()


def test_all_positives() -> None:
    logits, targets = random_case(12, num=12, pos_frac=1.0)
    targets = torch.where(targets > 0, targets, 0.5)
    ranking, _, u_rank, _ = updates(logits, targets)
    assert ranking == 0.0 and not u_rank.any()
    check_against_loop(logits, targets)


def test_chunked_equals_unchunked() -> None:
    logits, targets = random_case(13, num=3000, pos_frac=0.07)
    one_row = updates(logits, targets, chunk_elements=1)  # one positive per chunk
    few_rows = updates(logits, targets, chunk_elements=20_000)  # several per chunk
    whole = updates(logits, targets, chunk_elements=2**40)  # everything at once
    for chunked in (one_row, few_rows):
        assert chunked[0] == pytest.approx(whole[0], rel=RTOL)
        assert chunked[1] == pytest.approx(whole[1], rel=RTOL)
        np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-10, atol=1e-16)
        np.testing.assert_allclose(chunked[3], whole[3], rtol=1e-10, atol=1e-16)
    check_against_loop(logits[:400], targets[:400])


def dense_ranking(logits: torch.Tensor, targets: torch.Tensor, delta: float) -> tuple:
    """The ranking loss and update from full [P, M] comparisons (float64 broadcasting)."""
    positive = targets > 0
    s, num_pos = logits[positive], int(positive.sum())
    x = logits[None, :] - s[:, None]  # [P, M]
    h = (x >= 0).double() if delta == 0 else (x / (2 * delta) + 0.5).clamp(0, 1)
    num_fp = h[:, ~positive].sum(1)
    rank = h[:, positive].sum(1) + num_fp
    update = (rank.reciprocal() @ h) / num_pos
    update[positive] = -num_fp / rank / num_pos
    return (num_fp / rank).mean().item(), update.numpy()


@pytest.mark.parametrize("delta", [0.5, 0.0])
@pytest.mark.parametrize("grid", [False, True])
def test_ranking_matches_dense_comparisons_at_scale(delta: float, grid: bool) -> None:
    """Thousands of negatives (too many for the loop), also on a coarse grid where many
    logits sit exactly on the edges s_i ± δ of the smoothed step."""
    logits, targets = random_case(17, num=20_000, pos_frac=0.02)
    if grid:
        logits = (logits * 4).round() / 4
    ranking, _, u_rank, _ = updates(logits, targets, delta=delta)
    dense = dense_ranking(logits, targets, delta)
    assert ranking == pytest.approx(dense[0], rel=1e-12)
    np.testing.assert_allclose(u_rank, dense[1], rtol=1e-10, atol=1e-16)


def test_gradients_of_the_two_outputs_are_separable() -> None:
    logits, targets = random_case(14)
    _, _, u_rank, u_sort = updates(logits, targets)
    assert u_rank.any() and u_sort.any()
    x = logits.clone().requires_grad_()
    ranking, sorting = rank_sort_loss(x, targets)
    (0.3 * ranking - 2.0 * sorting).backward()
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.numpy(), 0.3 * u_rank - 2.0 * u_sort, rtol=1e-12)
    y = logits.clone().requires_grad_()
    ranking, sorting = rank_sort_loss(y, targets)
    (ranking + sorting).backward()  # the paper's update: U_rank + U_sort
    assert y.grad is not None
    np.testing.assert_allclose(y.grad.numpy(), u_rank + u_sort, rtol=1e-12)


def test_each_update_sums_to_zero_and_pushes_the_right_way() -> None:
    logits, targets = random_case(15, num=200)
    _, _, u_rank, u_sort = updates(logits, targets)
    assert abs(u_rank.sum()) < 1e-12 and abs(u_sort.sum()) < 1e-12
    positive = (targets > 0).numpy()
    assert (u_rank[positive] <= 0).all()  # positives are pulled up (gradient descent)
    assert (u_rank[~positive] >= 0).all()  # negatives pushed down
    assert not u_sort[~positive].any()  # sorting never touches negatives


def test_negatives_far_below_every_positive_change_nothing() -> None:
    logits, targets = random_case(16)
    floor = logits[targets > 0].min().item() - 0.5
    far = torch.full((50,), floor) - torch.rand(50, dtype=torch.float64) * 10
    far[0] = floor  # exactly δ below: H(−δ) = 0 as well
    more_logits = torch.cat([logits, far])
    more_targets = torch.cat([targets, torch.zeros(50, dtype=torch.float64)])
    base, extended = updates(logits, targets), updates(more_logits, more_targets)
    assert extended[:2] == pytest.approx(base[:2], rel=RTOL)
    np.testing.assert_allclose(extended[2][:60], base[2], rtol=RTOL, atol=1e-16)
    np.testing.assert_array_equal(extended[3][:60], base[3])  # the sorting part never saw them
    assert not extended[2][60:].any() and not extended[3][60:].any()


def test_a_target_of_exactly_zero_is_a_negative() -> None:
    """The documented choice: IoU 0 means background, even at a 'positive' anchor."""
    logits = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with_zero = updates(logits, torch.tensor([0.7, 0.0], dtype=torch.float64))
    assert with_zero[0] == pytest.approx(1 / 1.5, rel=RTOL)  # the 0 ranks above: an FP
    assert with_zero[2][1] > 0  # and is pushed down like any negative


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_agrees_with_float64(seed: int) -> None:
    logits, targets = random_case(seed, num=500)
    ranking, sorting = rank_sort_loss(logits.float(), targets.float())
    assert ranking.dtype == sorting.dtype == torch.float32
    loop = ref.rank_sort_loop(logits.tolist(), targets.tolist(), 0.5)
    assert ranking.item() == pytest.approx(loop[0], rel=1e-5)
    assert sorting.item() == pytest.approx(loop[1], rel=1e-4, abs=1e-6)
    x = logits.float().requires_grad_()
    ranking, sorting = rank_sort_loss(x, targets.float())
    (ranking + sorting).backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    np.testing.assert_allclose(x.grad.numpy(), loop[2] + loop[3], rtol=1e-4, atol=1e-7)


def test_half_logits_compute_in_float32() -> None:
    logits, targets = random_case(3, num=100)
    x = logits.half().requires_grad_()
    ranking, _ = rank_sort_loss(x, targets.half())
    assert ranking.dtype == torch.float32
    ranking.backward()
    assert x.grad is not None and x.grad.dtype == torch.float16


def test_deterministic_and_inputs_unchanged() -> None:
    logits, targets = random_case(4, num=300)
    copies = logits.clone(), targets.clone()
    first, second = updates(logits, targets), updates(logits, targets)
    assert first[:2] == second[:2]
    assert np.array_equal(first[2], second[2]) and np.array_equal(first[3], second[3])
    assert torch.equal(logits, copies[0]) and torch.equal(targets, copies[1])


def test_no_gradient_reaches_the_targets() -> None:
    logits, targets = random_case(5)
    x, y = logits.clone().requires_grad_(), targets.clone().requires_grad_()
    ranking, sorting = rank_sort_loss(x, y)
    (ranking + sorting).backward()
    assert x.grad is not None and y.grad is None


def test_nan_logits_make_both_losses_nan() -> None:
    logits, targets = random_case(6)
    logits[(targets == 0).nonzero()[0]] = torch.nan  # a negative: excluded by any threshold
    ranking, sorting = rank_sort_loss(logits, targets)
    assert ranking.isnan() and sorting.isnan()


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="flattened"):
        rank_sort_loss(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="flattened"):
        rank_sort_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="delta"):
        RankSortLoss(delta=-0.1)
    with pytest.raises(ValueError, match="chunk_elements"):
        RankSortLoss(chunk_elements=0)
    with pytest.raises(TypeError):
        RankSortLoss(0.5)  # type: ignore[call-arg]


def test_slot_object() -> None:
    assert CLASSIFICATION_LOSSES["rs"] is RankSortLoss
    loss = RankSortLoss(delta=0.25)
    assert not isinstance(loss, ElementwiseClassificationLoss)  # the detector's switch
    assert loss.uses_iou_targets
    logits, targets = random_case(8)
    out = loss(logits, targets)
    expected = rank_sort_loss(logits, targets, delta=0.25)
    assert out[0].item() == expected[0].item() and out[1].item() == expected[1].item()


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    logits, targets = random_case(9, num=5000, pos_frac=0.05, dtype=torch.float32)
    cpu = updates(logits, targets, chunk_elements=50_000)
    x = logits.cuda().requires_grad_()
    ranking, sorting = rank_sort_loss(x, targets.cuda(), chunk_elements=50_000)
    (ranking + sorting).backward()
    assert x.grad is not None and x.grad.is_cuda
    assert ranking.item() == pytest.approx(cpu[0], rel=1e-5)
    assert sorting.item() == pytest.approx(cpu[1], rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(x.grad.cpu().numpy(), cpu[2] + cpu[3], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------- the box-loss balance
def test_rs_box_loss_takes_the_value_of_the_rs_loss() -> None:
    box_losses = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    scores = torch.tensor([0.9, 0.3, 0.6], dtype=torch.float64, requires_grad=True)
    rs = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    out = rs_box_loss(box_losses, scores, rs)
    mean_box = (0.9 * 0.2 + 0.3 * 0.5 + 0.6 * 0.9) / 1.8
    assert out.item() == pytest.approx(0.8, rel=RTOL)
    out.backward()
    assert box_losses.grad is not None
    expected = (0.8 / mean_box) * np.array([0.9, 0.3, 0.6]) / 1.8  # λ · w_i / Σ w
    np.testing.assert_allclose(box_losses.grad.numpy(), expected, rtol=RTOL)
    assert scores.grad is None and rs.grad is None  # weights and λ are detached


def test_rs_box_loss_edge_cases() -> None:
    empty = torch.zeros(0, requires_grad=True)
    out = rs_box_loss(empty, torch.zeros(0), torch.tensor(0.0))
    assert out.item() == 0.0 and out.requires_grad
    perfect = rs_box_loss(torch.zeros(2), torch.ones(2), torch.tensor(0.5))
    assert perfect.item() == 0.0  # L_box = 0: no division by zero
    unscored = rs_box_loss(torch.tensor([0.5, 0.5]), torch.zeros(2), torch.tensor(0.5))
    assert unscored.item() == 0.0  # all weights 0: the sum counts as 1, L_box = 0
    with pytest.raises(ValueError, match="box_losses"):
        rs_box_loss(torch.zeros(3), torch.zeros(2), torch.tensor(0.0))
