"""Quality Focal Loss against the GFL formula in NumPy, by hand, at extremes and gradcheck."""

from __future__ import annotations

import math

import cls_loss_refs as ref
import numpy as np
import pytest
import torch

from detectors.losses import QualityFocalLoss, sigmoid_focal_loss
from detectors.losses.quality_focal import quality_focal_loss

EXTREME_LOGITS = [-100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0]
EXTREME_TARGETS = [0.0, 0.3, 1.0]


def random_inputs(seed: int, shape: tuple[int, int] = (37, 5)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 4
    ious = torch.rand(*shape, generator=gen, dtype=torch.float64)
    targets = torch.where(torch.rand(*shape, generator=gen) < 0.3, ious, 0.0)  # 0 or IoU
    return logits, targets


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_formula_and_its_derivative(beta: float, seed: int) -> None:
    logits, targets = random_inputs(seed)
    logits.requires_grad_()
    loss = quality_focal_loss(logits, targets, beta=beta)
    x, y = logits.detach().numpy(), targets.numpy()
    np.testing.assert_allclose(loss.detach().numpy(), ref.qfl(x, y, beta), rtol=1e-9, atol=1e-14)
    loss.sum().backward()
    assert logits.grad is not None
    np.testing.assert_allclose(
        logits.grad.numpy(), ref.qfl_grad(x, y, beta), rtol=1e-9, atol=1e-14
    )


def test_hand_worked_values() -> None:
    logits = torch.tensor([[0.0, 0.0, math.log(3.0)]], dtype=torch.float64)  # σ: .5 .5 .75
    targets = torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64)
    expected = [
        0.5**2 * math.log(2.0),  # |1 − .5|² · (−log .5)
        0.0,  # σ equals the target: no loss at all
        0.5**2 * -(0.25 * math.log(0.75) + 0.75 * math.log(0.25)),
    ]
    loss = QualityFocalLoss(beta=2.0)(logits, targets)
    assert loss.squeeze(0).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_binary_targets_give_the_focal_loss_without_alpha() -> None:
    """With y ∈ {0, 1}, |y − σ| = 1 − p_t: QFL(β) is focal loss with γ = β and no α."""
    logits, _ = random_inputs(3)
    gen = torch.Generator().manual_seed(4)
    one_hot = (torch.rand(logits.shape, generator=gen) < 0.2).double()
    qfl = quality_focal_loss(logits, one_hot, beta=2.0)
    focal = sigmoid_focal_loss(logits, one_hot, alpha=-1, gamma=2.0)
    torch.testing.assert_close(qfl, focal, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_value_and_gradient_at_extremes(dtype: torch.dtype) -> None:
    grid = torch.tensor(EXTREME_LOGITS, dtype=dtype)
    logits = grid[:, None].repeat(1, len(EXTREME_TARGETS)).requires_grad_()
    targets = torch.tensor(EXTREME_TARGETS, dtype=dtype).expand_as(logits)
    loss = quality_focal_loss(logits, targets)
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(logits.grad).all())
    if dtype == torch.float64:  # and the values are the formula's, not clamped ones
        # (absolute tolerance: torch's BCE is log(1 + e^−|x|)-accurate in absolute terms
        # only, so a 1e-40 loss may be off by 1 % of itself)
        x, y = logits.detach().numpy(), targets.numpy()
        np.testing.assert_allclose(
            loss.detach().numpy(), ref.qfl(x, y, 2.0), rtol=1e-10, atol=1e-15
        )
        expected_grad = ref.qfl_grad(x, y, 2.0)
        np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-8, atol=1e-15)
    # a confidently wrong logit costs a lot; a confidently right one nothing measurable
    assert loss[EXTREME_LOGITS.index(-30.0), 2] > 20  # target 1, logit −30
    assert loss[EXTREME_LOGITS.index(30.0), 2] < 1e-12


@pytest.mark.parametrize("beta", [1.0, 2.0, 2.5])
def test_gradcheck(beta: float) -> None:
    logits, targets = random_inputs(5, shape=(6, 3))
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: quality_focal_loss(x, targets, beta=beta), (logits,), eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("beta", [-1.0, 0.5])
def test_rejects_betas_with_an_infinite_slope(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        QualityFocalLoss(beta=beta)
    with pytest.raises(ValueError, match="beta"):
        quality_focal_loss(torch.zeros(1, 1), torch.zeros(1, 1), beta=beta)
