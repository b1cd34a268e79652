"""The dense-detector base: backbone -> head -> (losses | detections).

A dense detector predicts, at every anchor (or point) of every FPN level, class logits and
a box. Subclasses say how targets are assigned and how boxes are encoded; the base owns the
parts every dense head shares: focal classification loss with the optional DC weighting,
the correlation loss between IoU and score over the positives, and post-processing through
the NMS slot. Images enter as ``[B, 3, H, W]`` floats in [0, 1]; boxes are xyxy pixels of
that (padded) input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectors import box_ops
from detectors.assigners import Assigner
from detectors.config import CorrLossConfig, DCConfig
from detectors.losses import dc_weights, pooled_correlation_loss
from detectors.losses.focal import FocalLoss
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


def global_mean(value: Tensor) -> Tensor:
    """Average of a scalar across DDP workers (identity outside DDP); no gradient."""
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


class DenseDetector(nn.Module):
    """Shared machinery. Subclasses implement :meth:`head_outputs` and
    :meth:`regression_loss`; assignment goes through the ``assigner`` slot."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        assigner: Assigner,
        num_classes: int,
        cls_loss: FocalLoss,
        corr: CorrLossConfig,
        dc: DCConfig,
        nms: NMS,
        post: PostprocessParams,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.assigner = assigner
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.corr = corr
        self.dc = dc
        self.nms = nms
        self.post = post
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.iteration = 0  # set by the training loop; assigners with warm-up read it
        self.num_levels = self.batch_size = 0  # of the batch being processed

    # ----------------------------------------------------------------- subclass contract
    def head_outputs(self, features: list[Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """Run the head: must return ``cls_logits`` [B, N, C], ``pred_boxes`` [B, N, 4]
        (decoded, xyxy), ``anchors`` [N, 4] (the boxes or cells the assigner labels) and
        ``num_per_level`` (list[int], sums to N); may add more."""
        raise NotImplementedError

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

    def regression_loss(self, outputs: dict[str, Any], positive: Tensor, pos: Positives) -> Tensor:
        """Sum over positives of the box loss (a 0-dim tensor)."""
        raise NotImplementedError

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
        cls_logits: Tensor = outputs["cls_logits"]  # [B, N, C]
        self.num_levels, self.batch_size = len(outputs["num_per_level"]), len(targets)
        labels, matched_gt, num_recalled = self.match(outputs, targets)
        positive = labels == 1  # [B, N]
        valid = labels >= 0
        num_pos = global_mean(positive.sum().float()).clamp(min=1.0)

        pos = self.gather_positives(outputs, targets, positive, matched_gt)
        cls_targets = torch.zeros_like(cls_logits)  # [B, N, C]
        cls_targets[positive] = nn.functional.one_hot(pos.gt_labels, self.num_classes).to(
            cls_logits.dtype
        )
        per_anchor = self.cls_loss(cls_logits[valid], cls_targets[valid]).sum(dim=1)  # [V]
        is_pos_valid = positive[valid]
        stats: dict[str, Tensor] = {
            "num_pos": positive.sum().float(),
            "recalled_anchors": num_recalled.float(),
        }
        pos_cls = per_anchor[is_pos_valid]
        if self.dc.enabled and len(pos_cls):
            if self.dc.normalize:
                weights = dc_weights(
                    pos.pred_boxes.detach(), pos.gt_boxes, pos_cls.detach(), eps=self.dc.eps
                )
            else:  # raw λ = 1 / (e + ε): also rescales the positives' loss (ablation knob)
                weights = 1.0 / (
                    box_ops.elementwise_localization_error(pos.pred_boxes.detach(), pos.gt_boxes)
                    + self.dc.eps
                )
            pos_cls = pos_cls * weights
            stats |= {
                "dc_weight_mean": weights.mean(),
                "dc_weight_max": weights.max(),
                "dc_weight_min": weights.min(),
            }
        loss_cls = (pos_cls.sum() + per_anchor[~is_pos_valid].sum()) / num_pos
        loss_reg = self.regression_loss(outputs, positive, pos) / num_pos
        losses = {"loss_cls": loss_cls, "loss_reg": loss_reg}
        losses |= self.correlation_losses(pos, stats)
        return losses, {k: v.detach() for k, v in stats.items()}

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
        )

    def correlation_losses(self, pos: Positives, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``λ_corr · (1 − ρ(IoU, s))`` over the positives; ρ is logged even when λ = 0."""
        scores = pos.logits.gather(1, pos.gt_labels[:, None]).squeeze(1).sigmoid()  # [P]
        ious = box_ops.elementwise_box_iou(pos.pred_boxes, pos.gt_boxes)  # [P]
        pool = self.corr.pool
        pool_ids = {"batch": None, "level": pos.level_ids, "image": pos.image_ids}[pool]
        # Level ids mean the same on every DDP worker; image ids are local to each worker.
        pool_args: dict[str, Any] = {
            "num_pools": {"batch": None, "level": self.num_levels, "image": self.batch_size}[pool],
            "rank_local_ids": pool == "image",
        }
        if self.corr.weight == 0:
            with torch.no_grad():
                out = pooled_correlation_loss(
                    scores.float(),
                    ious.float(),
                    pool_ids,
                    kind=self.corr.kind,
                    strength=self.corr.strength,
                    strength_mode=self.corr.strength_mode,
                    ddof=self.corr.ddof,
                    **pool_args,
                )
        else:
            out = pooled_correlation_loss(
                scores,
                ious,
                pool_ids,
                kind=self.corr.kind,
                strength=self.corr.strength,
                strength_mode=self.corr.strength_mode,
                ddof=self.corr.ddof,
                grad_to=self.corr.grad_to,
                sync=self.corr.sync,
                **pool_args,
            )
        stats["corr_coefficient"] = torch.tensor(out.coefficient)
        stats["corr_skipped_pools"] = torch.tensor(float(out.num_skipped))
        if self.corr.weight == 0:
            return {}
        return {"loss_corr": self.corr.weight * out.loss}

    # ------------------------------------------------------------------ post-processing
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
        targets are given — ``pos_scores``/``pos_ious`` of the positives before NMS (β_img)."""
        cls_logits: Tensor = outputs["cls_logits"]
        pred_boxes: Tensor = outputs["pred_boxes"]
        results = []
        for b in range(cls_logits.shape[0]):
            cand_boxes, cand_scores, cand_labels = [], [], []
            start = 0
            for count in outputs["num_per_level"]:
                logits = cls_logits[b, start : start + count].flatten()  # [n * C]
                boxes = pred_boxes[b, start : start + count]
                start += count
                scores = logits.sigmoid()
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
            scores = pos.logits.gather(1, pos.gt_labels[:, None]).squeeze(1).sigmoid()
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
