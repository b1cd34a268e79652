"""Varifocal Loss against the VarifocalNet formula in NumPy, by hand, at extremes and
gradcheck; positives are IoU-weighted and never focal-down-weighted."""

from __future__ import annotations

import math

import cls_loss_refs as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectors.losses import VarifocalLoss
from detectors.losses.varifocal import varifocal_loss

EXTREME_LOGITS = [-100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0]
EXTREME_TARGETS = [0.0, 0.3, 1.0]


def random_inputs(seed: int, shape: tuple[int, int] = (37, 5)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 4
    ious = torch.rand(*shape, generator=gen, dtype=torch.float64)
    targets = torch.where(torch.rand(*shape, generator=gen) < 0.3, ious, 0.0)  # 0 or IoU
    return logits, targets


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 0.0), (1.0, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_formula_and_its_derivative(alpha: float, gamma: float, seed: int) -> None:
    logits, targets = random_inputs(seed)
    logits.requires_grad_()
    loss = varifocal_loss(logits, targets, alpha=alpha, gamma=gamma)
    x, q = logits.detach().numpy(), targets.numpy()
    expected = ref.vfl(x, q, alpha, gamma)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10, atol=1e-15)
    loss.sum().backward()
    assert logits.grad is not None
    expected_grad = ref.vfl_grad(x, q, alpha, gamma)
    np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-10, atol=1e-15)


def test_hand_worked_values() -> None:
    logits = torch.tensor([[math.log(3.0), math.log(3.0), 0.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0, 0.6, 1.0]], dtype=torch.float64)  # σ = .75, .75, .5
    expected = [
        0.75 * 0.75**2 * math.log(4.0),  # negative: α σ^γ · (−log(1 − σ))
        0.6 * -(0.6 * math.log(0.75) + 0.4 * math.log(0.25)),  # q · BCE(σ, q)
        1.0 * math.log(2.0),
    ]
    loss = VarifocalLoss(alpha=0.75, gamma=2.0)(logits, targets)
    assert loss.squeeze(0).tolist() == pytest.approx(expected, rel=1e-12)


def test_positives_ignore_alpha_and_gamma() -> None:
    """The asymmetry of the paper: a positive's loss is q · BCE whatever α and γ are."""
    logits, targets = random_inputs(2)
    a = varifocal_loss(logits, targets, alpha=0.75, gamma=2.0)
    b = varifocal_loss(logits, targets, alpha=0.1, gamma=4.0)
    positive = targets > 0
    assert bool(positive.any()) and bool((~positive).any())
    assert torch.equal(a[positive], b[positive])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(a[positive], (targets * bce)[positive], rtol=1e-14, atol=0)
    assert bool((a[~positive] != b[~positive]).all())  # negatives do depend on them


@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_value_and_gradient_at_extremes(dtype: torch.dtype, gamma: float) -> None:
    grid = torch.tensor(EXTREME_LOGITS, dtype=dtype)
    logits = grid[:, None].repeat(1, len(EXTREME_TARGETS)).requires_grad_()
    targets = torch.tensor(EXTREME_TARGETS, dtype=dtype).expand_as(logits)
    loss = varifocal_loss(logits, targets, gamma=gamma)
    loss.sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(logits.grad).all())
    if dtype == torch.float64:  # the formula's values (atol: see test_quality_focal)
        x, q = logits.detach().numpy(), targets.numpy()
        expected = ref.vfl(x, q, 0.75, gamma)
        np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10, atol=1e-15)
        expected_grad = ref.vfl_grad(x, q, 0.75, gamma)
        np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-8, atol=1e-15)
    row = EXTREME_LOGITS.index(30.0)
    assert loss[row, 0].item() == pytest.approx(0.75 * 30.0, rel=1e-6)  # confident false positive


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.5, 0.5)])
def test_gradcheck(alpha: float, gamma: float) -> None:
    logits, targets = random_inputs(5, shape=(6, 3))
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: varifocal_loss(x, targets, alpha=alpha, gamma=gamma),
        (logits,),
        eps=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize(("alpha", "gamma"), [(-0.1, 2.0), (0.75, -1.0)])
def test_rejects_negative_parameters(alpha: float, gamma: float) -> None:
    with pytest.raises(ValueError, match="alpha and gamma"):
        VarifocalLoss(alpha=alpha, gamma=gamma)
