"""Independent float64 references for the classification-loss tests.

The element-wise losses are the published formulas in NumPy (logs of σ through
``logaddexp``, so ±30 is exact); their gradients are differentiated by hand. Rank & Sort
Loss is a plain loop over positives and over every example, Algorithm 1 of Oksuz et al.
(ICCV 2021) read literally: no chunking, no filtering of low negatives, no vectorisation.
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


def step(x: float, delta: float) -> float:
    """The smoothed step H of RS Loss (δ = 0: the hard step, H(0) = 1)."""
    if delta == 0:
        return 1.0 if x >= 0 else 0.0
    return min(1.0, max(0.0, x / (2 * delta) + 0.5))


def rank_sort_loop(
    logits: list[float], targets: list[float], delta: float
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """RS Loss by Algorithm 1: ``(ranking, sorting, ranking update, sorting update)``.

    Positives are ``targets > 0``, every other example is a negative. The updates are the
    identity update (the gradient the Function must return), [M] each, normalised by |P|.
    """
    m = len(logits)
    s, y = [float(v) for v in logits], [float(v) for v in targets]
    pos = [i for i in range(m) if y[i] > 0]
    neg = [j for j in range(m) if not y[j] > 0]
    rank_update, sort_update = np.zeros(m), np.zeros(m)
    if not pos:
        return 0.0, 0.0, rank_update, sort_update
    ranking_errors, sorting_errors = [], []
    for i in pos:
        rank_pos = sum(step(s[j] - s[i], delta) for j in pos)  # j = i included
        num_fp = sum(step(s[j] - s[i], delta) for j in neg)
        rank = rank_pos + num_fp
        ranking_error = num_fp / rank
        current = sum(step(s[j] - s[i], delta) * (1 - y[j]) for j in pos) / rank_pos
        ahead = [j for j in pos if y[j] >= y[i]]  # target order: IoU at or above y_i
        target = sum(step(s[j] - s[i], delta) * (1 - y[j]) for j in ahead) / sum(
            step(s[j] - s[i], delta) for j in ahead
        )
        sorting_error = current - target
        ranking_errors.append(ranking_error)
        sorting_errors.append(sorting_error)

        if num_fp > 0:  # ranking: i's update is its error, negatives share it by the pmf
            rank_update[i] -= ranking_error
            for j in neg:
                rank_update[j] += ranking_error * step(s[j] - s[i], delta) / num_fp
        missorted = [j for j in pos if y[j] < y[i]]
        denom = sum(step(s[j] - s[i], delta) for j in missorted)
        if denom > 0:  # sorting: mis-sorted positives share i's sorting error by the pmf
            sort_update[i] -= sorting_error
            for j in missorted:
                sort_update[j] += sorting_error * step(s[j] - s[i], delta) / denom
    num_pos = len(pos)
    return (
        sum(ranking_errors) / num_pos,
        sum(sorting_errors) / num_pos,
        rank_update / num_pos,
        sort_update / num_pos,
    )
