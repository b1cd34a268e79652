"""Independent float64 references for the classification-loss tests.

The element-wise losses are the published formulas in NumPy (logs of σ through
``logaddexp``, so ±30 is exact); their gradients are differentiated by hand.
"""

from __future__ import annotations

import numpy as np


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def log_one_minus_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(log_sigmoid(x))


def bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``−(y log σ(x) + (1 − y) log(1 − σ(x)))``."""
    return -(y * log_sigmoid(x) + (1 - y) * log_one_minus_sigmoid(x))


def qfl(x: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray:
    """GFL's Quality Focal Loss: ``|y − σ|^β · BCE(σ, y)``."""
    return np.abs(y - sigmoid(x)) ** beta * bce(x, y)


def qfl_grad(x: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray:
    """d QFL / dx = β |d|^(β−1) sign(d) σ(1−σ) · BCE + |d|^β (σ − y), d = σ − y."""
    p = sigmoid(x)
    d = p - y
    if beta == 0:
        return d
    slope = beta * np.abs(d) ** (beta - 1) * np.sign(d) * p * (1 - p)
    return slope * bce(x, y) + np.abs(d) ** beta * d


def vfl(x: np.ndarray, q: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """VarifocalNet: ``q · BCE(σ, q)`` for q > 0, ``α σ^γ · BCE(σ, 0)`` for q = 0."""
    positive = q * bce(x, q)
    negative = alpha * sigmoid(x) ** gamma * bce(x, np.zeros_like(x))
    return np.where(q > 0, positive, negative)


def vfl_grad(x: np.ndarray, q: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """q > 0: q (σ − q); q = 0: α (γ σ^γ (1 − σ) softplus(x) + σ^γ σ)."""
    p = sigmoid(x)
    softplus = np.logaddexp(0.0, x)
    negative = alpha * (gamma * p**gamma * (1 - p) * softplus + p**gamma * p)
    return np.where(q > 0, q * (p - q), negative)
