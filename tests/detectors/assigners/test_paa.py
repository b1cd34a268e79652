"""PAA: the EM against scikit-learn, hand-built score clusters, per-level top-k, the whole
assigner against a loop over ground truths that fits scikit-learn's mixture (the authors'
code read literally), and the PAA detector with its own and with IAC assignment."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.mixture as skm
import torch
from assigner_refs import max_iou_loop, random_scene
from torch import Tensor

from detectors.assigners import NEGATIVE, POSITIVE, IACAssigner, PAAAssigner
from detectors.assigners.paa import GaussianMixture1D, fit_gmm_1d, rank_within_groups, separate
from detectors.box_ops import elementwise_box_iou, elementwise_giou
from detectors.config import load_config
from detectors.models import build_detector
from detectors.models.paa import PAA, score_voting


def sklearn_gmm(values: np.ndarray) -> object:
    """The reference's mixture: means at min / max, weights 1/2, precisions 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on degenerate samples
        return skm.GaussianMixture(
            2,
            weights_init=[0.5, 0.5],
            means_init=[[values.min()], [values.max()]],
            precisions_init=[[[1.0]], [[1.0]]],
        ).fit(values[:, None])


def random_scores(seed: int) -> np.ndarray:
    """Loss-like samples: two clusters, a uniform spread, or a skewed tail."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    kind = seed % 3
    if kind == 0:
        low = rng.normal(0.4, 0.1, n)
        return np.concatenate([low, rng.normal(2.0, 0.5, int(rng.integers(1, 12)))])
    if kind == 1:
        return rng.uniform(0.0, 3.0, n)
    return rng.exponential(1.0, n)


# ------------------------------------------------------------------------------ the EM
@pytest.mark.parametrize("seed", range(30))
def test_em_matches_scikit_learn(seed: int) -> None:
    values = random_scores(seed)
    ref = sklearn_gmm(values)
    x = torch.tensor(values)[None]
    gmm = fit_gmm_1d(x, torch.ones_like(x, dtype=torch.bool))
    np.testing.assert_allclose(gmm.weights[0].numpy(), ref.weights_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gmm.means[0].numpy(), ref.means_[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        gmm.variances[0].numpy(), ref.covariances_[:, 0, 0], rtol=1e-9, atol=1e-12
    )
    assert gmm.predict(x)[0].tolist() == ref.predict(values[:, None]).tolist()
    np.testing.assert_allclose(
        gmm.score_samples(x)[0].numpy(), ref.score_samples(values[:, None]), atol=1e-8
    )


def test_em_rows_are_independent_of_padding_and_batching() -> None:
    rows = [random_scores(seed) for seed in range(6)]
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), math.inf, dtype=torch.float64)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    batched = fit_gmm_1d(x, torch.isfinite(x))
    for i, r in enumerate(rows):
        ref = sklearn_gmm(r)
        np.testing.assert_allclose(batched.means[i].numpy(), ref.means_[:, 0], atol=1e-10)
        np.testing.assert_allclose(batched.weights[i].numpy(), ref.weights_, atol=1e-10)


def test_em_on_identical_values_is_finite() -> None:
    x = torch.full((1, 5), 0.7, dtype=torch.float64)
    gmm = fit_gmm_1d(x, torch.ones_like(x, dtype=torch.bool))
    assert torch.isfinite(gmm.variances).all() and bool((gmm.variances > 0).all())
    # Both components coincide: every value goes to component 0, so all are positive.
    assert separate(x, torch.ones_like(x, dtype=torch.bool), gmm).all()


def test_separation_rule() -> None:
    # Component 0 around 0.2 (σ 0.1), component 1 around 2 (σ 0.5). The mixture density is
    # highest among component-0 values at 0.21: every value <= 0.21 is positive, including
    # 0.05 (component 0 too) but not 0.3 (component 0 as well, beyond the peak).
    gmm = GaussianMixture1D(
        weights=torch.tensor([[0.5, 0.5]], dtype=torch.float64),
        means=torch.tensor([[0.2, 2.0]], dtype=torch.float64),
        variances=torch.tensor([[0.01, 0.25]], dtype=torch.float64),
    )
    x = torch.tensor([[0.05, 0.21, 0.3, 1.8, 2.5, math.inf]], dtype=torch.float64)
    valid = torch.isfinite(x)
    assert gmm.predict(torch.where(valid, x, 0.0))[0, :5].tolist() == [0, 0, 0, 1, 1]
    assert separate(x, valid, gmm)[0].tolist() == [True, True, False, False, False, False]
    # Component 0 with no values at all: every candidate is positive (the authors' rule).
    empty = GaussianMixture1D(gmm.weights, torch.tensor([[-50.0, 2.0]]), gmm.variances)
    assert separate(x, valid, empty)[0].tolist() == [True] * 5 + [False]


def test_rank_within_groups() -> None:
    groups = torch.tensor([1, 0, 1, 1, 0, 2])
    values = torch.tensor([0.5, 0.2, 0.1, 0.5, 0.1, 9.0])
    # group 0: 0.2 -> 1, 0.1 -> 0; group 1: 0.5 (first) -> 1, 0.1 -> 0, 0.5 (later) -> 2.
    assert rank_within_groups(groups, values).tolist() == [1, 1, 0, 2, 0, 0]


# ------------------------------------------------------------------------- the score
def test_anchor_score_is_focal_sum_plus_weighted_giou_loss() -> None:
    probs = torch.tensor([[0.9, 0.2]], dtype=torch.float64)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pred = torch.tensor([[1.0, 0.0, 11.0, 10.0]])  # IoU = GIoU = 90 / 110
    score = PAAAssigner(reg_weight=2.0).anchor_scores(probs, pred, gt, torch.tensor([0]))
    focal = 0.25 * 0.1**2 * -math.log(0.9) + 0.75 * 0.2**2 * -math.log(0.8)
    assert score.item() == pytest.approx(focal + 2.0 * (1 - 90 / 110), rel=1e-9)


# -------------------------------------------------------------- hand-built assignments
def square(side: float, x0: float = 0.0, y0: float = 0.0) -> list[float]:
    return [x0, y0, x0 + side, y0 + side]


def shifted(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_two_clusters_make_exactly_the_low_loss_candidates_positive() -> None:
    # Two ground truths, six overlapping anchors each (IoU >= 0.1). Per gt, three anchors
    # predict its box exactly (equal low losses: one mode, so all three are at or below it)
    # and three predict far off (losses about 2).
    gts = [square(10), square(20, 50, 50)]
    anchors, preds, owner, want_labels, want_gt = [], [], [], [], []
    for g, gt in enumerate(gts):
        side = gt[2] - gt[0]
        for i in range(6):
            anchors.append(square(side * (1 + 0.1 * i), gt[0], gt[1]))
            good = i in (1, 3, 4)  # not simply the best-IoU anchors
            preds.append(gt if good else shifted(gt, (3 + 0.2 * i) * side))
            owner.append(g)
            want_labels.append(POSITIVE if good else NEGATIVE)
            want_gt.append(g if good else -1)
    anchors_t, preds_t = torch.tensor(anchors), torch.tensor(preds)
    gt_boxes, gt_labels = torch.tensor(gts), torch.tensor([0, 1])
    probs = torch.full((12, 2), 0.3)
    assigner = PAAAssigner()
    owner_t = torch.tensor(owner)
    scores = assigner.anchor_scores(probs, preds_t, gt_boxes[owner_t], gt_labels[owner_t])
    good = torch.tensor(want_labels) == POSITIVE
    assert scores[good].max() < 0.2 < 1.5 < scores[~good].min()  # two clear clusters
    result = assigner.assign(anchors_t, gt_boxes, gt_labels, probs, pred_boxes=preds_t)
    assert result.labels.tolist() == want_labels
    assert result.matched_gt.tolist() == want_gt


def per_level_scene() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One gt, five candidate anchors: three on level 0 with low losses (0.1, 0.18, 0.26 +
    the focal part), two on level 1 with high ones (about 2); the first three predict the gt
    shifted by 0.5, 1 and 1.5 px, the last two boxes far away."""
    gt = square(10)
    anchors = torch.tensor([square(10), square(11), square(12), square(14), square(15)])
    far = [[40.0, 40.0, 50.0, 50.0], [45.0, 45.0, 55.0, 55.0]]
    preds = torch.tensor([shifted(gt, 0.5), shifted(gt, 1.0), shifted(gt, 1.5), *far])
    return anchors, torch.tensor([gt]), torch.full((5, 1), 0.5), preds


def test_low_cluster_is_cut_at_its_densest_value() -> None:
    # Fig. 3 (c): positives are the candidates scoring at most the component-0 value of
    # highest density. Three evenly spaced low losses: the middle one is that value, so the
    # two lowest are positive and the third (still component 0) is not.
    anchors, gt_boxes, probs, preds = per_level_scene()
    result = PAAAssigner().assign(anchors, gt_boxes, torch.tensor([0]), probs, pred_boxes=preds)
    assert result.labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE]


def test_topk_is_taken_per_level() -> None:
    anchors, gt_boxes, probs, preds = per_level_scene()
    labels = torch.tensor([0])

    def candidates(topk: int, per_level: list[int] | None) -> list[int]:
        cand, cand_gt, _ = PAAAssigner(topk=topk).candidates(
            anchors, gt_boxes, labels, probs, preds, per_level
        )
        assert cand_gt.tolist() == [0] * len(cand)
        return sorted(cand.tolist())

    # Per level: level 0's two lowest (not anchor 2, third on its level) and both of level 1.
    assert candidates(2, [3, 2]) == [0, 1, 3, 4]
    assert candidates(1, [3, 2]) == [0, 3]
    assert candidates(3, [3, 2]) == [0, 1, 2, 3, 4]
    assert candidates(2, None) == [0, 1]  # one level: the two lowest overall
    assert candidates(2, [1, 4]) == [0, 1, 2]  # level 1 = anchors 1..4: 1 and 2 are lowest
    # Assignment: with topk=1 per level the candidates are 0 and 3, one per cluster.
    result = PAAAssigner(topk=1).assign(
        anchors, gt_boxes, labels, probs, num_anchors_per_level=[3, 2], pred_boxes=preds
    )
    assert result.labels.tolist() == [POSITIVE] + [NEGATIVE] * 4


def test_no_ground_truth_and_no_candidate() -> None:
    anchors, _, probs, preds = per_level_scene()
    assigner = PAAAssigner()
    empty = assigner.assign(
        anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), probs, pred_boxes=preds
    )
    assert empty.labels.tolist() == [NEGATIVE] * 5 and empty.matched_gt.tolist() == [-1] * 5
    far = assigner.assign(
        anchors, torch.tensor([square(5, 100, 100)]), torch.tensor([0]), probs, pred_boxes=preds
    )
    assert far.labels.tolist() == [NEGATIVE] * 5


def test_single_candidate_is_kept_and_small_iou_only_via_best_anchor() -> None:
    # A 4 px gt inside 20 px anchors: IoU 0.04 < 0.1, so only its best anchor(s) qualify.
    gt = torch.tensor([square(4, 2, 2)])
    # IoU 16/400 for the first two (both best: identical scores, both kept); 16/1600 for the
    # third, which is neither above 0.1 nor best, so no candidate.
    anchors = torch.tensor([square(20), square(20, -12, 0), square(40, -10, -10)])
    preds = anchors.clone()
    result = PAAAssigner().assign(
        anchors, gt, torch.tensor([0]), torch.full((3, 1), 0.1), pred_boxes=preds
    )
    assert result.labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE]
    one = PAAAssigner().assign(
        anchors[:1], gt, torch.tensor([0]), torch.full((1, 1), 0.1), pred_boxes=preds[:1]
    )
    assert one.labels.tolist() == [POSITIVE]


def test_nan_predictions_do_not_become_positive() -> None:
    anchors, gt_boxes, probs, preds = per_level_scene()
    preds[0] = math.nan
    result = PAAAssigner().assign(anchors, gt_boxes, torch.tensor([0]), probs, pred_boxes=preds)
    assert result.labels[0].item() == NEGATIVE
    assert result.labels[1].item() == POSITIVE


# ------------------------------------------------- the whole rule against a plain loop
def paa_loop(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    cls_probs: Tensor,
    pred_boxes: Tensor,
    per_level: list[int],
    topk: int,
) -> list[int]:
    """The authors' ``compute_paa`` one gt and one level at a time, with scikit-learn."""
    labels, matched = max_iou_loop(anchors, gt_boxes, 0.1, 0.1, True)
    starts = np.cumsum([0, *per_level])
    num_classes = cls_probs.shape[1]
    out = [-1] * len(anchors)
    for g in range(len(gt_boxes)):
        candidates: list[int] = []
        losses: dict[int, float] = {}
        for lvl in range(len(per_level)):
            mine = [
                a
                for a in range(starts[lvl], starts[lvl + 1])
                if labels[a] == 1 and matched[a] == g
            ]
            for a in mine:
                p = cls_probs[a].double().clamp(1e-12, 1 - 1e-12)
                target = torch.zeros(num_classes, dtype=torch.float64)
                target[gt_labels[g]] = 1
                focal = -(
                    0.25 * target * (1 - p) ** 2 * p.log()
                    + 0.75 * (1 - target) * p**2 * (1 - p).log()
                )
                giou = elementwise_giou(
                    pred_boxes[a : a + 1].double(), gt_boxes[g : g + 1].double()
                )
                losses[a] = float(focal.sum()) + 1 - float(giou)
            candidates += sorted(mine, key=lambda a: losses[a])[:topk]
        if len(candidates) == 1:
            out[candidates[0]] = g
        if len(candidates) < 2:
            continue
        values = np.array(sorted(losses[a] for a in candidates))
        gmm = sklearn_gmm(values)
        fg = gmm.predict(values[:, None]) == 0
        if fg.any():
            density = np.where(fg, gmm.score_samples(values[:, None]), -np.inf)
            boundary = values[int(np.argmax(density))]
        else:
            boundary = np.inf
        for a in candidates:
            if losses[a] <= boundary:
                out[a] = g
    return out


@pytest.mark.parametrize("seed", range(6))
def test_assigner_matches_loop_with_scikit_learn(seed: int) -> None:
    anchors, gt_boxes, gt_labels, cls_probs = random_scene(seed, num_anchors=240)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(anchors), 4, generator=gen, dtype=torch.float64) * 6
    pred_boxes = anchors + noise
    pred_boxes[:, 2:] = torch.max(pred_boxes[:, 2:], pred_boxes[:, :2] + 1)
    per_level = [100, 80, 60]
    result = PAAAssigner(topk=5).assign(
        anchors,
        gt_boxes,
        gt_labels,
        cls_probs,
        num_anchors_per_level=per_level,
        pred_boxes=pred_boxes,
    )
    want = paa_loop(anchors, gt_boxes, gt_labels, cls_probs, pred_boxes, per_level, 5)
    assert result.matched_gt.tolist() == want
    assert torch.equal(result.labels == POSITIVE, torch.tensor(want) >= 0)
    # The scene must make GMM separation matter: some candidates are rejected.
    candidates = torch.tensor(max_iou_loop(anchors, gt_boxes, 0.1, 0.1, True)[0]) == 1
    assert 0 < result.num_pos < int(candidates.sum())


@pytest.mark.parametrize("kwargs", [{"topk": 0}, {"iou_thr": 0.0}, {"max_iter": 0}, {"tol": 0.0}])
def test_invalid_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PAAAssigner(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the detector
def test_score_voting() -> None:
    det = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cands = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the detection itself
            [1.0, 0.0, 11.0, 10.0],  # IoU 90/110, same class
            [-1.0, 0.0, 9.0, 10.0],  # its mirror image, lower score
            [2.0, 0.0, 12.0, 10.0],  # other class: no vote
            [30.0, 0.0, 40.0, 10.0],  # no overlap: no vote
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.3, 0.9, 0.9])
    labels = torch.tensor([1, 1, 1, 0, 1])
    w = math.exp(-((1 - 90 / 110) ** 2) / 0.025)
    want_x1 = (0.6 * w * 1.0 + 0.3 * w * -1.0) / (0.9 + 0.6 * w + 0.3 * w)
    voted = score_voting(det, torch.tensor([1]), cands, scores, labels)
    assert voted[0].tolist() == pytest.approx([want_x1, 0.0, want_x1 + 10, 10.0], abs=1e-6)
    # Nobody to vote (not even itself): the box stays.
    alone = score_voting(det, torch.tensor([2]), cands, scores, labels)
    assert alone.tolist() == det.tolist()


def two_step_stats(**overrides: object) -> tuple[PAA, list[dict[str, float]]]:
    cfg = load_config("smoke", overrides={"model.name": "paa", **overrides})
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    assert isinstance(model, PAA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=gen)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 30.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    history = []
    for it in range(2):
        model.iteration = it
        losses, stats = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in (losses | stats).items()})
    return model, history


def test_paa_trains_with_iou_branch_and_iac_replaces_its_assigner() -> None:
    model, history = two_step_stats()
    assert isinstance(model.assigner, PAAAssigner)
    assert all(r["num_pos"] > 0 and r["loss_iou"] > 0 for r in history)
    assert all(math.isfinite(v) for r in history for k, v in r.items() if k != "corr_coefficient")
    _, without_iou = two_step_stats(**{"model.quality": "none"})  # the paper's ablation
    assert all("loss_iou" not in r and math.isfinite(r["loss_reg"]) for r in without_iou)
    iac, iac_history = two_step_stats(**{"assign.kind": "iac", "assign.score_thr": 0.01})
    assert isinstance(iac.assigner, IACAssigner)
    assert sum(r["recalled_anchors"] for r in iac_history) > 0  # IAC, not PAA, assigned
    assert all(math.isfinite(r["loss_cls"] + r["loss_reg"] + r["loss_iou"]) for r in iac_history)


def test_box_loss_is_iou_weighted_giou_and_iou_branch_learns_the_iou() -> None:
    model, _ = two_step_stats()
    model.train()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 64, 64, generator=gen)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])}]
    with torch.no_grad():
        feats = model.backbone((images - model.pixel_mean) / model.pixel_std)
        outputs = model.head_outputs(feats, (64, 64))
        labels, matched, _ = model.match(outputs, targets)
        pos = model.gather_positives(outputs, targets, labels == 1, matched)
        losses, _ = model.losses(outputs, targets)
    ious = elementwise_box_iou(pos.pred_boxes, pos.gt_boxes)  # the weights
    gious = elementwise_giou(pos.pred_boxes, pos.gt_boxes)
    want = 1.3 * (ious * (1 - gious)).sum() / ious.sum()
    assert len(ious) > 0
    assert losses["loss_reg"].item() == pytest.approx(want.item(), rel=1e-5)
    iou_logits = outputs["quality"][labels == 1]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(iou_logits, ious, reduction="sum")
    assert losses["loss_iou"].item() == pytest.approx(0.5 * bce.item() / len(ious), rel=1e-5)
