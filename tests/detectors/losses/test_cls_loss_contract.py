"""Every element-wise entry of ``CLASSIFICATION_LOSSES`` honours the
:class:`ElementwiseClassificationLoss` contract on the same cases."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from detectors.losses import CLASSIFICATION_LOSSES, ElementwiseClassificationLoss, RankSortLoss

ELEMENTWISE = sorted(
    name
    for name, cls in CLASSIFICATION_LOSSES.items()
    if issubclass(cls, ElementwiseClassificationLoss)
)
EXTREMES = [-100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0]


def make(name: str) -> ElementwiseClassificationLoss:
    loss = CLASSIFICATION_LOSSES[name]()  # defaults must be usable
    assert isinstance(loss, ElementwiseClassificationLoss)
    return loss


def inputs(
    loss: ElementwiseClassificationLoss, n: int, c: int, seed: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Logits and the targets this loss expects: one-hot, or the positive's IoU."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    positive = torch.rand(n, generator=gen) < 0.3
    value = torch.rand(n, generator=gen) * 0.8 + 0.2 if loss.uses_iou_targets else torch.ones(n)
    targets = torch.zeros(n, c)
    targets[positive, labels[positive]] = value[positive]
    return logits, targets.to(dtype)


def run(loss: ElementwiseClassificationLoss, logits: Tensor, targets: Tensor) -> Tensor:
    out = loss(logits, targets)
    assert out.shape == logits.shape
    assert out.dtype == logits.dtype
    assert bool(torch.isfinite(out).all())
    assert bool((out >= 0).all())
    assert torch.equal(out, loss(logits, targets))  # deterministic
    return out


def test_table_lists_the_implementations() -> None:
    assert set(CLASSIFICATION_LOSSES) == {"focal", "qfl", "vfl", "rs"}
    assert ELEMENTWISE == ["focal", "qfl", "vfl"]
    assert CLASSIFICATION_LOSSES["rs"] is RankSortLoss  # the one that is not element-wise


@pytest.mark.parametrize("name", sorted(CLASSIFICATION_LOSSES))
def test_constructor_is_keyword_only(name: str) -> None:
    with pytest.raises(TypeError):
        CLASSIFICATION_LOSSES[name](0.5)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", sorted(CLASSIFICATION_LOSSES))
def test_target_kind(name: str) -> None:
    """Detectors build IoU targets for exactly the losses that ask for them."""
    assert CLASSIFICATION_LOSSES[name].uses_iou_targets == (name != "focal")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_shape_dtype_and_sign_on_random_inputs(name: str, dtype: torch.dtype) -> None:
    loss = make(name)
    logits, targets = inputs(loss, 50, 5, seed=0, dtype=dtype)
    out = run(loss, logits, targets)
    assert bool((out > 0).any())


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_zero_size_input(name: str) -> None:
    loss = make(name)
    logits = torch.zeros(0, 4, requires_grad=True)
    out = run(loss, logits, torch.zeros(0, 4))
    assert out.shape == (0, 4)
    out.sum().backward()
    assert logits.grad is not None and logits.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_finite_value_and_gradient_at_extremes(name: str, dtype: torch.dtype) -> None:
    loss = make(name)
    grid = torch.tensor(EXTREMES, dtype=dtype)
    logits = grid[:, None].repeat(1, 3).requires_grad_()
    targets = torch.tensor([0.0, 0.5, 1.0], dtype=dtype).expand_as(logits)
    run(loss, logits, targets).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_loss_falls_as_the_logit_moves_towards_the_target(name: str) -> None:
    loss = make(name)
    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)[:, None].repeat(1, 2)
    targets = torch.tensor([0.0, 1.0], dtype=torch.float64).expand_as(logits)
    out = run(loss, logits, targets)
    assert bool((out[1:, 0] > out[:-1, 0]).all())  # background: worse as the logit grows
    assert bool((out[1:, 1] < out[:-1, 1]).all())  # a perfect positive: better


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_gradient_flows_to_the_logits_only(name: str) -> None:
    loss = make(name)
    logits, targets = inputs(loss, 30, 3, seed=1, dtype=torch.float64)
    logits.requires_grad_()
    targets.requires_grad_()  # IoUs of predicted boxes may carry a graph
    loss(logits, targets).sum().backward()
    assert targets.grad is None
    assert logits.grad is not None and bool(logits.grad.abs().gt(0).all())


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_mismatched_shapes_are_rejected(name: str) -> None:
    loss = make(name)
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(12), torch.zeros(12))  # flattened pairs are RS's interface


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_inputs_are_not_modified(name: str) -> None:
    loss = make(name)
    logits, targets = inputs(loss, 20, 3, seed=2, dtype=torch.float32)
    copies = logits.clone(), targets.clone()
    run(loss, logits, targets)
    assert torch.equal(logits, copies[0]) and torch.equal(targets, copies[1])
