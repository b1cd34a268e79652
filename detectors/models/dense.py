"""The dense-detector base: backbone -> head -> (losses | detections).

A dense detector predicts, at every location (an anchor box, or a cell around a point) of
every FPN level, class logits, four box outputs and optionally a quality logit. It is put
together from parts, each a slot object built by :func:`detectors.models.build_detector`:
the head (:class:`~detectors.models.head.DenseHead`), the locations (an
:class:`~detectors.models.anchors.AnchorGenerator`), the box coder
(:mod:`detectors.models.box_coders`), the assigner, the classification, box and
correlation losses, the optional DC weighting and quality branch, and the NMS. The base
owns everything they share: assignment through the slot, the classification loss with DC
weighting, the box loss, the quality branch's loss and test-time score, the correlation
loss over the positives, and post-processing. RetinaNet, ATSS, FCOS and FoveaBox differ
only in their parts; PAA also weights its box loss by IoU and votes its boxes. Images enter
as ``[B, 3, H, W]`` floats in [0, 1]; boxes are xyxy pixels of that (padded) input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detectors import box_ops
from detectors.assigners import Assigner
from detectors.losses import (
    CorrelationLoss,
    DCWeighting,
    ElementwiseClassificationLoss,
    RankSortLoss,
    RegressionLoss,
    rs_box_loss,
)
from detectors.models.anchors import AnchorGenerator
from detectors.models.box_coders import BoxCoder
from detectors.models.head import DenseHead
from detectors.postprocess import NMS

Targets = list[dict[str, Any]]

# ImageNet statistics: torchvision's trunks expect them, and they are harmless for the rest.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PostprocessParams:
    score_threshold: float  # candidates below this are dropped before NMS
    pre_nms_topk: int  # candidates kept per level before NMS
    max_detections: int  # per image after NMS


@dataclass(frozen=True, kw_only=True)
class QualityBranch:
    """A localization-quality logit per location, trained with binary cross-entropy on the
    positives (normalised by their number) and multiplied into the score at test time:
    ``p^(1 − α) · q^α``.

    ``target``: ``centerness`` (FCOS; 1 at the box centre, 0 at its border, from the
    location's centre) or ``iou`` (IoU-aware RetinaNet, PAA: the IoU of the positive's
    detached decoded box with its ground truth)."""

    target: Literal["centerness", "iou"]
    loss_weight: float = 1.0
    alpha: float = 0.5  # 0.5: sqrt(p · q), the FCOS / ATSS / PAA / IoU-aware RetinaNet form

    @property
    def loss_name(self) -> str:
        return f"loss_{self.target}"


@dataclass
class Positives:
    """What every dense loss needs about the positives of one batch, flattened over images.

    ``logits`` [P, C] and ``pred_boxes``/``gt_boxes`` [P, 4] keep their autograd graphs.
    """

    logits: Tensor  # [P, C] class logits of the positive anchors
    gt_labels: Tensor  # [P] int64
    pred_boxes: Tensor  # [P, 4] decoded predictions (xyxy)
    gt_boxes: Tensor  # [P, 4] matched ground truths (xyxy)
    level_ids: Tensor  # [P] FPN level index (0-based)
    image_ids: Tensor  # [P] index of the image in the batch
    anchor_ids: Tensor  # [P] index of the location within its image


def global_mean(value: Tensor) -> Tensor:
    """Average of a scalar across DDP workers (identity outside DDP); no gradient."""
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


class DenseDetector(nn.Module):
    """Shared machinery of every dense detector; see the module docstring. Subclasses may
    override :meth:`box_loss_term` and :meth:`detection_boxes`."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: DenseHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        assigner: Assigner,
        num_classes: int,
        cls_loss: ElementwiseClassificationLoss | RankSortLoss,
        box_loss: RegressionLoss,
        box_weight: float,
        quality: QualityBranch | None,
        correlation: CorrelationLoss,
        dc: DCWeighting | None,
        nms: NMS,
        post: PostprocessParams,
    ) -> None:
        super().__init__()
        if (head.quality is None) != (quality is None):
            raise ValueError("the head has a quality conv exactly when there is a quality branch")
        if dc is not None and not isinstance(cls_loss, ElementwiseClassificationLoss):
            raise ValueError("DC weights element-wise classification losses")
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator  # anchors, or the stride-sized cells of points
        self.box_coder = box_coder
        self.assigner = assigner
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.box_weight = box_weight
        self.quality = quality
        self.correlation = correlation
        self.dc = dc
        self.nms = nms
        self.post = post
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.iteration = 0  # set by the training loop; assigners with warm-up read it
        self.num_levels = self.batch_size = 0  # of the batch being processed

    def head_outputs(self, features: list[Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """Run the head: ``cls_logits`` [B, N, C], ``box_reg`` [B, N, 4] (raw), ``quality``
        [B, N] logits or None, ``pred_boxes`` [B, N, 4] (decoded, xyxy), ``anchors`` [N, 4]
        (the boxes or cells the assigner labels) and ``num_per_level`` (list[int], sums to N)."""
        cls_logits, box_reg, quality = self.head(features)
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors, num_per_level = self.anchor_generator(sizes, cls_logits.device)
        return {
            "cls_logits": cls_logits,
            "box_reg": box_reg,
            "quality": quality,
            "pred_boxes": self.box_coder.decode(box_reg, anchors),
            "anchors": anchors,
            "num_per_level": num_per_level,
        }

    def match(self, outputs: dict[str, Any], targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Assign targets: ``labels`` [B, N] (1 pos, 0 neg, -1 ignored), ``matched_gt``
        [B, N] (index into each image's ``boxes``; -1 where none), ``num_recalled`` (0-dim).
        The assigner slot decides; it sees the predictions only if it asks for them."""
        return assign_batch(
            self.assigner,
            outputs["anchors"],
            targets,
            outputs["cls_logits"],
            iteration=self.iteration,
            num_per_level=outputs["num_per_level"],
            pred_boxes=outputs["pred_boxes"],
        )

    # ----------------------------------------------------------------------- forward
    def forward(self, images: Tensor, targets: Targets | None = None) -> Any:
        """Training: ``(losses, stats)``; evaluation: a list of detections per image."""
        mean, std = self.pixel_mean, self.pixel_std
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        features = self.backbone((images - mean) / std)
        outputs = self.head_outputs(features, (images.shape[-2], images.shape[-1]))
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.losses(outputs, targets)
        return self.postprocess(outputs, targets)

    # ------------------------------------------------------------------------ losses
    def losses(
        self, outputs: dict[str, Any], targets: Targets
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The classification terms (``loss_cls``; RS: ``loss_rank``, ``loss_sort``),
        ``loss_reg``, ``loss_corr`` (λ_corr > 0) and the quality branch's ``loss_centerness``
        / ``loss_iou``, each normalised; and the statistics to log."""
        self.num_levels, self.batch_size = len(outputs["num_per_level"]), len(targets)
        labels, matched_gt, num_recalled = self.match(outputs, targets)
        positive = labels == 1  # [B, N]
        valid = labels >= 0
        num_pos = global_mean(positive.sum().float()).clamp(min=1.0)

        pos = self.gather_positives(outputs, targets, positive, matched_gt)
        stats: dict[str, Tensor] = {
            "num_pos": positive.sum().float(),
            "recalled_anchors": num_recalled.float(),
        }
        cls_targets = self.classification_targets(outputs, positive, pos)  # [B, N, C]
        if isinstance(self.cls_loss, RankSortLoss):
            # RS-Net: the two RS losses as they come, and the box loss balanced to their value.
            rank, sort = self.cls_loss(
                outputs["cls_logits"][valid].flatten(), cls_targets[valid].flatten()
            )
            losses = {"loss_rank": rank, "loss_sort": sort}
            losses["loss_reg"] = self.rs_box_loss_term(outputs, positive, pos, rank + sort)
        else:
            loss_cls = self.elementwise_cls_loss(outputs, positive, valid, pos, cls_targets, stats)
            losses = {"loss_cls": loss_cls / num_pos}
            losses["loss_reg"] = self.box_loss_term(outputs, positive, pos, num_pos)
        losses |= self.correlation_losses(pos, stats)
        losses |= self.quality_losses(outputs, positive, pos, num_pos)
        return losses, {k: v.detach() for k, v in stats.items()}

    def classification_targets(
        self, outputs: dict[str, Any], positive: Tensor, pos: Positives
    ) -> Tensor:
        """[B, N, C]: 0 everywhere but each positive's ground-truth class column, which holds
        1, or the IoU of its decoded box (detached) for losses that learn the quality."""
        cls_logits: Tensor = outputs["cls_logits"]
        cls_targets = torch.zeros_like(cls_logits)
        one_hot = nn.functional.one_hot(pos.gt_labels, self.num_classes).to(cls_logits.dtype)
        if self.cls_loss.uses_iou_targets:
            ious = box_ops.elementwise_box_iou(pos.pred_boxes.detach(), pos.gt_boxes)  # [P]
            one_hot = one_hot * ious[:, None].to(cls_logits.dtype)
        cls_targets[positive] = one_hot
        return cls_targets

    def elementwise_cls_loss(
        self,
        outputs: dict[str, Any],
        positive: Tensor,
        valid: Tensor,
        pos: Positives,
        cls_targets: Tensor,
        stats: dict[str, Tensor],
    ) -> Tensor:
        """Σ over the valid locations and classes of the loss, the positives' weighted by DC
        when it is on (0-dim, not yet normalised)."""
        assert isinstance(self.cls_loss, ElementwiseClassificationLoss)
        logits = outputs["cls_logits"][valid]
        per_anchor = self.cls_loss(logits, cls_targets[valid]).sum(dim=1)  # [V]
        is_pos_valid = positive[valid]
        pos_cls = per_anchor[is_pos_valid]
        if self.dc is not None and len(pos_cls):
            weights = self.dc(pos.pred_boxes, pos.gt_boxes, pos_cls)
            pos_cls = pos_cls * weights
            stats |= {
                "dc_weight_mean": weights.mean(),
                "dc_weight_max": weights.max(),
                "dc_weight_min": weights.min(),
            }
        return pos_cls.sum() + per_anchor[~is_pos_valid].sum()

    def box_losses(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        """Per positive, the box loss between the coder's targets and the outputs [P]."""
        anchors = outputs["anchors"][positive.nonzero(as_tuple=True)[1]]  # [P, 4]
        target = self.box_coder.encode(anchors, pos.gt_boxes)
        pred = self.box_coder.regression(outputs["box_reg"][positive])
        return self.box_loss(pred, target, pred_boxes=pos.pred_boxes, gt_boxes=pos.gt_boxes)

    def box_loss_term(
        self, outputs: dict[str, Any], positive: Tensor, pos: Positives, num_pos: Tensor
    ) -> Tensor:
        """``box_weight · Σ_pos ℓ / num_pos`` (0-dim; ``num_pos`` averaged over DDP workers);
        with no positive a zero that keeps the box branch in the graph (DDP needs its
        gradients)."""
        if len(pos.gt_boxes) == 0:
            return outputs["box_reg"].sum() * 0 / num_pos
        return self.box_weight * self.box_losses(outputs, positive, pos).sum() / num_pos

    def rs_box_loss_term(
        self, outputs: dict[str, Any], positive: Tensor, pos: Positives, rs_loss: Tensor
    ) -> Tensor:
        """RS-Net's box term: the positives' box losses averaged with their (detached)
        max-class probabilities as weights, rescaled to the RS loss's value (no configured
        weight, no division by num_pos; :func:`~detectors.losses.rs_box_loss`)."""
        if len(pos.gt_boxes) == 0:  # keep the box branch in the graph (DDP needs its gradients)
            return outputs["box_reg"].sum() * 0
        scores = pos.logits.detach().sigmoid().max(dim=1).values  # [P]
        return rs_box_loss(self.box_losses(outputs, positive, pos), scores, rs_loss)

    def quality_targets(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        """What the quality branch learns for each positive [P], in [0, 1], no gradient."""
        assert self.quality is not None
        if self.quality.target == "iou":
            return box_ops.elementwise_box_iou(pos.pred_boxes.detach(), pos.gt_boxes)
        # Centerness from the location's centre: 1 at the box centre, 0 at its border.
        centres = box_ops.box_centers(outputs["anchors"][positive.nonzero(as_tuple=True)[1]])
        return box_ops.ltrb_centerness(box_ops.encode_ltrb(centres, pos.gt_boxes))

    def quality_losses(
        self, outputs: dict[str, Any], positive: Tensor, pos: Positives, num_pos: Tensor
    ) -> dict[str, Tensor]:
        """The quality branch's BCE over the positives, ``loss_weight · Σ / num_pos``."""
        if self.quality is None:
            return {}
        logits: Tensor = outputs["quality"]  # [B, N]
        if len(pos.gt_boxes) == 0:  # keep the branch in the graph (DDP needs its gradients)
            total = logits.sum() * 0
        else:
            total = F.binary_cross_entropy_with_logits(
                logits[positive].float(),
                self.quality_targets(outputs, positive, pos),
                reduction="sum",
            )
        return {self.quality.loss_name: self.quality.loss_weight * total / num_pos}

    def gather_positives(
        self, outputs: dict[str, Any], targets: Targets, positive: Tensor, matched_gt: Tensor
    ) -> Positives:
        cls_logits: Tensor = outputs["cls_logits"]
        pred_boxes: Tensor = outputs["pred_boxes"]
        level_of_anchor = torch.repeat_interleave(
            torch.arange(len(outputs["num_per_level"]), device=cls_logits.device),
            torch.tensor(outputs["num_per_level"], device=cls_logits.device),
        )  # [N]
        img_idx, anchor_idx = positive.nonzero(as_tuple=True)  # [P], [P]
        gt_idx = matched_gt[img_idx, anchor_idx]
        gt_boxes_all = [t["boxes"] for t in targets]
        gt_labels_all = [t["labels"] for t in targets]
        offsets = torch.tensor([0] + [len(b) for b in gt_boxes_all], device=cls_logits.device)
        flat = offsets.cumsum(0)[img_idx] + gt_idx
        gt_boxes = (
            torch.cat(gt_boxes_all).to(pred_boxes.dtype)
            if len(flat)
            else pred_boxes.new_zeros((0, 4))
        )
        gt_labels = torch.cat(gt_labels_all) if len(flat) else flat.new_zeros(0)
        return Positives(
            logits=cls_logits[img_idx, anchor_idx],
            gt_labels=gt_labels[flat],
            pred_boxes=pred_boxes[img_idx, anchor_idx],
            gt_boxes=gt_boxes[flat],
            level_ids=level_of_anchor[anchor_idx],
            image_ids=img_idx,
            anchor_ids=anchor_idx,
        )

    def correlation_losses(self, pos: Positives, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``λ_corr · (1 − ρ(IoU, s))`` over the positives; ρ is logged even when λ = 0."""
        scores = pos.logits.gather(1, pos.gt_labels[:, None]).squeeze(1).sigmoid()  # [P]
        ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes)  # [P]
        loss, out = self.correlation(
            scores,
            ious,
            image_ids=pos.image_ids,
            num_images=self.batch_size,
            level_ids=pos.level_ids,
            num_levels=self.num_levels,
        )
        stats["corr_coefficient"] = torch.tensor(out.coefficient)
        stats["corr_skipped_pools"] = torch.tensor(float(out.num_skipped))
        return {} if loss is None else {"loss_corr": loss}

    # ------------------------------------------------------------------ post-processing
    def scores(self, outputs: dict[str, Any]) -> Tensor:
        """Test-time scores [B, N, C]: ``σ(cls)``, times the quality as ``p^(1 − α) · q^α``."""
        probs = outputs["cls_logits"].sigmoid()
        if self.quality is None:
            return probs
        quality = outputs["quality"].sigmoid()[..., None]  # [B, N, 1]
        if self.quality.alpha == 0.5:  # the published sqrt(p · q), computed as such
            return (probs * quality).sqrt()
        return probs.pow(1 - self.quality.alpha) * quality.pow(self.quality.alpha)

    def detection_boxes(
        self, keep: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor
    ) -> Tensor:
        """Boxes [K, 4] of the detections ``keep`` [K] (indices into one image's pre-NMS
        candidates ``boxes`` [M, 4], ``scores`` [M], ``labels`` [M]): by default their own
        boxes; PAA's score voting overrides it."""
        return boxes[keep]

    @torch.no_grad()
    def postprocess(
        self, outputs: dict[str, Any], targets: Targets | None
    ) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` [K, 4], ``scores`` [K], ``labels`` [K] after NMS, and — when
        targets are given — ``pos_scores``/``pos_ious`` of the positives before NMS (β_img).
        With a quality branch the scores are ``p^(1 − α) · q^α``."""
        probs = self.scores(outputs)  # [B, N, C]
        pred_boxes: Tensor = outputs["pred_boxes"]
        results = []
        for b in range(probs.shape[0]):
            cand_boxes, cand_scores, cand_labels = [], [], []
            start = 0
            for count in outputs["num_per_level"]:
                scores = probs[b, start : start + count].flatten()  # [n * C]
                boxes = pred_boxes[b, start : start + count]
                start += count
                keep = scores > self.post.score_threshold
                scores, idx = scores[keep], keep.nonzero().squeeze(1)
                if len(scores) > self.post.pre_nms_topk:
                    scores, top = scores.topk(self.post.pre_nms_topk)
                    idx = idx[top]
                cand_boxes.append(boxes[idx // self.num_classes])
                cand_scores.append(scores)
                cand_labels.append(idx % self.num_classes)
            boxes, scores = torch.cat(cand_boxes).float(), torch.cat(cand_scores).float()
            labels = torch.cat(cand_labels)
            keep, kept_scores = self.nms(boxes, scores, labels)
            keep, kept_scores = (
                keep[: self.post.max_detections],
                kept_scores[: self.post.max_detections],
            )
            results.append(
                {
                    "boxes": self.detection_boxes(keep, boxes, scores, labels),
                    "scores": kept_scores,
                    "labels": labels[keep],
                }
            )
        if targets is not None:
            labels_t, matched_gt, _ = self.match(outputs, targets)
            pos = self.gather_positives(outputs, targets, labels_t == 1, matched_gt)
            scores = probs[pos.image_ids, pos.anchor_ids, pos.gt_labels]  # the test-time score
            ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes)
            for b, result in enumerate(results):
                mine = pos.image_ids == b
                result["pos_scores"], result["pos_ious"] = scores[mine], ious[mine]
        return results


def assign_batch(
    assigner: Assigner,
    anchors: Tensor,
    targets: Targets,
    cls_logits: Tensor,
    *,
    iteration: int,
    num_per_level: list[int],
    pred_boxes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``assigner`` per image: ``(labels [B, N], matched_gt [B, N], num_recalled)``.

    ``pred_boxes`` [B, N, 4] (decoded, xyxy) reach assigners that use predictions (PAA)."""
    labels, matched, recalled = [], [], 0
    for b, target in enumerate(targets):
        probs = cls_logits[b].detach().sigmoid() if assigner.uses_cls_probs else None
        boxes = None
        if assigner.uses_predictions and pred_boxes is not None:
            boxes = pred_boxes[b].detach()
        result = assigner.assign(
            anchors,
            target["boxes"],
            target["labels"],
            probs,
            iteration=iteration,
            num_anchors_per_level=num_per_level,
            pred_boxes=boxes,
        )
        labels.append(result.labels)
        matched.append(result.matched_gt)
        recalled += result.num_recalled
    return (
        torch.stack(labels),
        torch.stack(matched),
        torch.tensor(float(recalled), device=anchors.device),
    )
