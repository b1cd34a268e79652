"""Probabilistic Anchor Assignment (PAA; Kim & Lee, ECCV 2020), as the authors' code does it.

Per image:

1. Pre-assignment: max-IoU with a low threshold (``iou_thr = 0.1``) plus every ground
   truth's best anchor(s) (torchvision ``Matcher`` low-quality matches); each matched anchor
   is a candidate for its argmax-IoU ground truth only.
2. Anchor score: the loss the head would incur if the anchor were positive for its ground
   truth, from the head's current (detached) predictions: focal loss to the ground truth's
   class summed over all classes, plus ``reg_weight · (1 − GIoU(predicted box, gt))``.
3. Candidates: per ground truth and FPN level, the ``topk`` matched anchors of lowest score.
4. Per ground truth, a two-component 1-D Gaussian mixture is fitted to the candidates'
   scores by EM (scikit-learn's ``GaussianMixture`` semantics: means initialised at the
   min / max score, weights 1/2, variances 1; ``reg_covar`` 1e-6; stop when the mean
   log-likelihood changes by less than ``tol`` or after ``max_iter`` iterations).
5. Separation, the paper's Fig. 3 (c) (the authors' code): among candidates the mixture
   assigns to the low-score component 0, find the one of highest mixture density; every
   candidate whose score is at most its score is positive (ties included). If component 0
   claims nobody, every candidate is positive; a ground truth with a single candidate keeps
   it. Everything else is negative: PAA ignores nothing.

The EM runs in torch (float64), batched over ground truths; it never calls scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from detectors.assigners.base import NEGATIVE, POSITIVE, Assigner, AssignResult, all_negative
from detectors.assigners.max_iou import max_iou_labels
from detectors.box_ops import box_iou_iomin, elementwise_giou
from detectors.losses.focal import sigmoid_focal_loss

# scikit-learn's GaussianMixture defaults, which the reference code used.
REG_COVAR = 1e-6  # added to every variance
NK_EPS = 10 * torch.finfo(torch.float64).eps  # added to every component's responsibility mass
# A non-finite anchor score (a diverged prediction) is replaced by this: the worst candidate.
WORST_SCORE = 1e4


@dataclass(frozen=True)
class GaussianMixture1D:
    """Two-component 1-D Gaussian mixtures, one per row: ``weights``, ``means``,
    ``variances`` [R, 2] (component 0 starts at the smallest value of its row)."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def weighted_log_prob(self, x: Tensor) -> Tensor:
        """``log w_k + log N(x | μ_k, σ²_k)`` for ``x`` [R, K] -> [R, K, 2]."""
        diff = x[..., None] - self.means[:, None, :]  # [R, K, 2]
        var = self.variances[:, None, :]
        log_norm = -0.5 * (math.log(2 * math.pi) + var.log() + diff.square() / var)
        return log_norm + self.weights[:, None, :].log()

    def predict(self, x: Tensor) -> Tensor:
        """Most probable component of every value [R, K] -> [R, K] int64 (0 on ties)."""
        return self.weighted_log_prob(x).argmax(dim=-1)

    def score_samples(self, x: Tensor) -> Tensor:
        """Log-density of the mixture at every value [R, K] -> [R, K]."""
        return self.weighted_log_prob(x).logsumexp(dim=-1)


def fit_gmm_1d(
    x: Tensor, valid: Tensor, *, max_iter: int = 100, tol: float = 1e-3
) -> GaussianMixture1D:
    """EM for one two-component mixture per row of ``x`` [R, K] over its ``valid`` [R, K]
    entries (every row needs at least one; padding is ignored).

    Initialisation and stopping as the reference's ``sklearn.mixture.GaussianMixture(2,
    weights_init=[.5, .5], means_init=[[min], [max]], precisions_init=[[[1]], [[1]]])``:
    each iteration is an E-step then an M-step, and a row stops (keeping the parameters of
    that M-step) once the mean log-likelihood of its E-step changed by less than ``tol``.
    """
    x = x.double()
    mask = valid.to(x.dtype)  # [R, K]
    num = mask.sum(dim=1)  # [R]
    inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
    low = torch.where(valid, x, inf).amin(dim=1)
    high = torch.where(valid, x, -inf).amax(dim=1)
    gmm = GaussianMixture1D(
        weights=torch.full_like(x[:, :2], 0.5),
        means=torch.stack([low, high], dim=1),
        variances=torch.ones_like(x[:, :2]),
    )
    x = torch.where(valid, x, 0.0)  # padding (it may be inf) must not reach the sums below
    active = torch.ones_like(num, dtype=torch.bool)  # [R] rows still iterating
    lower_bound = torch.full_like(num, -math.inf)
    for _ in range(max_iter):
        # E-step: responsibilities under the current parameters.
        weighted = gmm.weighted_log_prob(x)  # [R, K, 2]
        log_norm = weighted.logsumexp(dim=-1)  # [R, K]
        resp = (weighted - log_norm[..., None]).exp() * mask[..., None]  # [R, K, 2]
        new_bound = (log_norm * mask).sum(dim=1) / num  # mean log-likelihood [R]
        # M-step.
        nk = resp.sum(dim=1) + NK_EPS  # [R, 2]
        means = (resp * x[..., None]).sum(dim=1) / nk
        variances = (resp * (x[..., None] - means[:, None, :]).square()).sum(dim=1) / nk
        keep = active[:, None]
        gmm = GaussianMixture1D(
            weights=torch.where(keep, nk / nk.sum(dim=1, keepdim=True), gmm.weights),
            means=torch.where(keep, means, gmm.means),
            variances=torch.where(keep, variances + REG_COVAR, gmm.variances),
        )
        converged = (new_bound - lower_bound).abs() < tol
        lower_bound = torch.where(active, new_bound, lower_bound)
        active &= ~converged
        if not bool(active.any()):
            break
    return gmm


def separate(x: Tensor, valid: Tensor, gmm: GaussianMixture1D) -> Tensor:
    """Positives [R, K] bool of each row's ``valid`` values ``x`` [R, K] under its fitted
    mixture: the values at most the value of highest mixture density among those assigned
    to component 0 (all valid values when component 0 has none)."""
    x = torch.where(valid, x.double(), 0.0)
    weighted = gmm.weighted_log_prob(x)  # [R, K, 2]
    foreground = valid & (weighted.argmax(dim=-1) == 0)  # [R, K]
    density = weighted.logsumexp(dim=-1).masked_fill(~foreground, -math.inf)
    peak = density.argmax(dim=1, keepdim=True)  # [R, 1] first maximum
    boundary = x.gather(1, peak)  # [R, 1]
    has_foreground = foreground.any(dim=1, keepdim=True)
    return valid & (~has_foreground | (x <= boundary))


def rank_within_groups(groups: Tensor, values: Tensor) -> Tensor:
    """Rank [N] of every value among those of its group (0 = smallest; ties by position).

    ``groups`` [N] int64, ``values`` [N]."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by group, then value
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    starts = (counts.cumsum(0) - counts).repeat_interleave(counts)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device) - starts
    return ranks


@dataclass(frozen=True, kw_only=True)
class PAAAssigner(Assigner):
    """PAA behind the :class:`Assigner` contract (needs ``cls_probs`` and ``pred_boxes``)."""

    uses_cls_probs: ClassVar[bool] = True
    uses_predictions: ClassVar[bool] = True

    topk: int = 9  # candidates per level per ground truth, lowest anchor score first
    iou_thr: float = 0.1  # pre-assignment: an anchor with max IoU >= this is a candidate
    focal_alpha: float = 0.25  # anchor score: focal loss as the classification loss
    focal_gamma: float = 2.0
    reg_weight: float = 1.0  # GIoU loss weight in the score (authors' code 1; mmdetection 1.3)
    max_iter: int = 100  # EM iterations at most (scikit-learn's default)
    tol: float = 1e-3  # EM stops when the mean log-likelihood changes by less

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if not 0 < self.iou_thr <= 1:
            raise ValueError(f"iou_thr must lie in (0, 1], got {self.iou_thr}")
        if self.max_iter < 1 or self.tol <= 0:
            raise ValueError("need max_iter >= 1 and tol > 0")

    def anchor_scores(
        self, cls_probs: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> Tensor:
        """The loss [M] (float64) of M anchors, each as a positive for one ground truth:
        ``cls_probs`` [M, C], ``pred_boxes`` / ``gt_boxes`` [M, 4], ``gt_labels`` [M]."""
        probs = cls_probs.double()
        logits = torch.logit(probs, eps=1e-12)  # the focal loss is defined on logits
        targets = F.one_hot(gt_labels, probs.shape[1]).to(probs.dtype)
        cls = sigmoid_focal_loss(
            logits, targets, alpha=self.focal_alpha, gamma=self.focal_gamma
        ).sum(dim=1)
        reg = 1 - elementwise_giou(pred_boxes.double(), gt_boxes.double())
        return torch.nan_to_num(cls + self.reg_weight * reg, nan=WORST_SCORE, posinf=WORST_SCORE)

    def candidates(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        cls_probs: Tensor,
        pred_boxes: Tensor,
        num_anchors_per_level: list[int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-3 for G >= 1: candidate anchor indices [M], their ground truth [M] and
        anchor score [M] (float64)."""
        device = anchors.device
        labels, matched = max_iou_labels(
            box_iou_iomin(anchors, gt_boxes)[0],
            fg_iou=self.iou_thr,
            bg_iou=self.iou_thr,
            allow_low_quality_matches=True,
        )
        cand = (labels == POSITIVE).nonzero().squeeze(1)  # [M] anchor indices
        cand_gt = matched[cand]  # [M]
        score = self.anchor_scores(
            cls_probs[cand], pred_boxes[cand], gt_boxes[cand_gt], gt_labels[cand_gt]
        )
        # Per (ground truth, level): the topk lowest scores.
        per_level = torch.tensor(num_anchors_per_level or [anchors.shape[0]], device=device)
        level = torch.bucketize(cand, per_level.cumsum(0), right=True)  # [M]
        top = rank_within_groups(cand_gt * len(per_level) + level, score) < self.topk
        return cand[top], cand_gt[top], score[top]

    def assign(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        cls_probs: Tensor | None = None,
        *,
        iteration: int = 0,
        num_anchors_per_level: list[int] | None = None,
        pred_boxes: Tensor | None = None,
    ) -> AssignResult:
        num_anchors, device = anchors.shape[0], anchors.device
        if gt_boxes.shape[0] == 0 or num_anchors == 0:
            return all_negative(num_anchors, device)
        if cls_probs is None or pred_boxes is None:
            raise ValueError(
                "PAAAssigner needs cls_probs and pred_boxes (the head's detached predictions)"
            )
        cand, cand_gt, score = self.candidates(
            anchors, gt_boxes, gt_labels, cls_probs, pred_boxes, num_anchors_per_level
        )
        if len(cand) == 0:
            return all_negative(num_anchors, device)

        # One row per ground truth with candidates, its scores ascending: [R, K] padded.
        rank = rank_within_groups(cand_gt, score)
        _, row = torch.unique(cand_gt, return_inverse=True)
        shape = (int(row.max()) + 1, int(rank.max()) + 1)
        x = torch.full(shape, math.inf, dtype=score.dtype, device=device)
        x[row, rank] = score
        valid = torch.isfinite(x)
        pos = valid.clone()  # a ground truth with one candidate keeps it
        fit = valid.sum(dim=1) >= 2
        if bool(fit.any()):
            gmm = fit_gmm_1d(x[fit], valid[fit], max_iter=self.max_iter, tol=self.tol)
            pos[fit] = separate(x[fit], valid[fit], gmm)

        is_pos = pos[row, rank]  # [M]
        labels = torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=device)
        matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
        labels[cand[is_pos]] = POSITIVE
        matched[cand[is_pos]] = cand_gt[is_pos]
        return AssignResult(labels=labels, matched_gt=matched, num_recalled=0)
