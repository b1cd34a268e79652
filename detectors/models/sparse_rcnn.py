"""Sparse R-CNN (Sun et al. 2021): N learnable proposals refined by iterative heads, no NMS.

Each image starts from the same N learnable boxes (normalised cxcywh, initialised to the
whole image) and N learnable proposal features. A stage pools each box's RoI feature from
its FPN level, lets the proposal features attend to one another, mixes each one with its own
RoI through a dynamic convolution whose weights it generates, and predicts class logits and
box deltas applied to the stage's input boxes. The next stage starts from those boxes
(detached) and the updated features. Training matches predictions to ground truths one to
one (:class:`~detectors.models.matcher.HungarianMatcher`) at every stage and sums the
stages' focal, L1 and GIoU losses, plus the correlation loss over each stage's matched
pairs (SPEC §2.1). Inference keeps the top-scoring (proposal, class) pairs of the last
stage: a set prediction has no duplicates to suppress.

Layout: pooler -> dynamic conv -> stage -> head -> model; the builder is
:func:`detectors.models.build_detector`. Images are ``[B, 3, H, W]`` in [0, 1]; boxes are xyxy
pixels of the (padded) input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detectors import box_ops
from detectors.losses import CorrelationLoss
from detectors.losses.focal import FocalLoss
from detectors.models.dense import PIXEL_MEAN, PIXEL_STD, Targets, global_mean
from detectors.models.matcher import HungarianMatcher

# Box-delta weights (dx, dy, dw, dh) of the reference: centre offsets are predicted x2.
BOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each box from its FPN level (detectron2's ``ROIAlignV2`` pooler).

    A box of area ``wh`` goes to level ``⌊4 + log2(√(wh) / 224)⌋`` (FPN paper, eq. 1),
    clamped to the pyramid; sampling is pixel-aligned (``aligned=True``).
    """

    CANONICAL_SIZE = 224  # an ImageNet-sized box ...
    CANONICAL_LEVEL = 4  # ... is pooled from P4

    def __init__(self, levels: list[int], output_size: int, sampling_ratio: int) -> None:
        super().__init__()
        self.levels = list(levels)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def level_of(self, boxes: Tensor) -> Tensor:
        """Index into ``levels`` of each box [P, 4] -> [P] int64."""
        size = box_ops.box_area(boxes).clamp(min=0).sqrt()
        level = torch.floor(self.CANONICAL_LEVEL + torch.log2(size / self.CANONICAL_SIZE + 1e-8))
        return (level.clamp(self.levels[0], self.levels[-1]) - self.levels[0]).long()

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        """features: one [B, C, H_l, W_l] per level; boxes [B, N, 4] -> [B·N, C, S, S]."""
        b, n, _ = boxes.shape
        flat = boxes.reshape(b * n, 4).float()
        image_idx = torch.arange(b, device=boxes.device).repeat_interleave(n)
        rois = torch.cat([image_idx[:, None].to(flat.dtype), flat], dim=1)  # [B·N, 5]
        level = self.level_of(flat)
        s = self.output_size
        out = features[0].new_zeros((b * n, features[0].shape[1], s, s))
        for index, (lvl, feature) in enumerate(zip(self.levels, features)):
            mine = (level == index).nonzero().squeeze(1)
            if len(mine):
                out[mine] = roi_align(  # float32 boxes: half precision would move them
                    feature.float(),
                    rois[mine],
                    s,
                    spatial_scale=1.0 / 2**lvl,
                    sampling_ratio=self.sampling_ratio,
                    aligned=True,
                ).to(out.dtype)
        return out


class DynamicConv(nn.Module):
    """Instance interaction: each proposal feature generates the weights of two 1x1 "convs"
    (batched matmuls, d -> d' -> d) applied to its own RoI feature, then a linear layer
    flattens the S×S result into one d-vector."""

    def __init__(self, dim: int, dynamic_dim: int, pooler_resolution: int) -> None:
        super().__init__()
        self.dim, self.dynamic_dim = dim, dynamic_dim
        self.num_params = dim * dynamic_dim
        self.dynamic_layer = nn.Linear(dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * pooler_resolution**2, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, proposal_features: Tensor, roi_features: Tensor) -> Tensor:
        """proposal_features [P, d], roi_features [P, S·S, d] -> [P, d]."""
        params = self.dynamic_layer(proposal_features)  # [P, 2·d·d']
        param1 = params[:, : self.num_params].view(-1, self.dim, self.dynamic_dim)
        param2 = params[:, self.num_params :].view(-1, self.dynamic_dim, self.dim)
        x = F.relu(self.norm1(torch.bmm(roi_features, param1)))  # [P, S·S, d']
        x = F.relu(self.norm2(torch.bmm(x, param2)))  # [P, S·S, d]
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))  # [P, d]


def _fc_tower(dim: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SparseRCNNStage(nn.Module):
    """One iterative head: self-attention among proposals, dynamic instance interaction,
    FFN, then a classification tower and a box tower."""

    def __init__(
        self,
        *,
        dim: int,
        num_classes: int,
        attention_heads: int,
        ffn_dim: int,
        dynamic_dim: int,
        pooler_resolution: int,
        cls_fcs: int,
        reg_fcs: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.self_attn = nn.MultiheadAttention(dim, attention_heads, dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.inst_interact = DynamicConv(dim, dynamic_dim, pooler_resolution)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.cls_tower = _fc_tower(dim, cls_fcs)
        self.reg_tower = _fc_tower(dim, reg_fcs)
        self.class_logits = nn.Linear(dim, num_classes)
        self.bbox_deltas = nn.Linear(dim, 4)

    def forward(
        self, roi_features: Tensor, proposal_features: Tensor, boxes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """roi_features [B·N, d, S, S], proposal_features [B, N, d], boxes [B, N, 4] ->
        ``(cls_logits [B, N, C], pred_boxes [B, N, 4] (float32), proposal_features')``."""
        b, n, d = proposal_features.shape
        attended = self.self_attn(proposal_features, proposal_features, proposal_features)[0]
        x = self.norm1(proposal_features + self.dropout(attended)).reshape(b * n, d)
        rois = roi_features.flatten(2).transpose(1, 2)  # [B·N, S·S, d]
        x = self.norm2(x + self.dropout(self.inst_interact(x, rois)))
        x = self.norm3(x + self.dropout(self.ffn(x)))  # [B·N, d]
        logits = self.class_logits(self.cls_tower(x))
        deltas = self.bbox_deltas(self.reg_tower(x))
        pred_boxes = box_ops.decode_deltas(deltas.float(), boxes.reshape(b * n, 4), BOX_WEIGHTS)
        return logits.view(b, n, -1), pred_boxes.view(b, n, 4), x.view(b, n, d)


class SparseRCNNHead(nn.Module):
    """Learnable proposals + ``num_stages`` stages: FPN features -> one output per stage."""

    def __init__(
        self,
        *,
        levels: list[int],
        num_classes: int,
        num_proposals: int,
        num_stages: int,
        dim: int,
        attention_heads: int,
        ffn_dim: int,
        dynamic_dim: int,
        pooler_resolution: int,
        sampling_ratio: int,
        cls_fcs: int,
        reg_fcs: int,
        dropout: float,
        prior_prob: float,
    ) -> None:
        super().__init__()
        self.num_proposals = num_proposals
        # Normalised cxcywh; (0.5, 0.5, 1, 1) is the whole image (the paper's best init).
        self.init_proposal_boxes = nn.Embedding(num_proposals, 4)
        nn.init.constant_(self.init_proposal_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_proposal_boxes.weight[:, 2:], 1.0)
        self.init_proposal_features = nn.Embedding(num_proposals, dim)
        self.pooler = MultiLevelRoIAlign(levels, pooler_resolution, sampling_ratio)
        self.stages = nn.ModuleList(
            SparseRCNNStage(
                dim=dim,
                num_classes=num_classes,
                attention_heads=attention_heads,
                ffn_dim=ffn_dim,
                dynamic_dim=dynamic_dim,
                pooler_resolution=pooler_resolution,
                cls_fcs=cls_fcs,
                reg_fcs=reg_fcs,
                dropout=dropout,
            )
            for _ in range(num_stages)
        )
        for param in self.stages.parameters():  # the reference's init: Xavier for matrices
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        prior_bias = -math.log((1 - prior_prob) / prior_prob)  # focal loss: start at prior
        for stage in self.stages:
            assert isinstance(stage, SparseRCNNStage)
            nn.init.constant_(stage.class_logits.bias, prior_bias)

    def forward(self, features: list[Tensor], image_whwh: Tensor) -> list[dict[str, Tensor]]:
        """features: one [B, d, H_l, W_l] per level; image_whwh [B, 4] ->
        per stage ``{"cls_logits": [B, N, C], "pred_boxes": [B, N, 4]}`` (first to last)."""
        b = image_whwh.shape[0]
        unit_boxes = box_ops.box_cxcywh_to_xyxy(self.init_proposal_boxes.weight)  # [N, 4]
        boxes = unit_boxes[None] * image_whwh[:, None, :]  # [B, N, 4]
        proposal_features = self.init_proposal_features.weight[None].expand(b, -1, -1)
        outputs = []
        for stage in self.stages:
            roi_features = self.pooler(features, boxes)
            logits, pred_boxes, proposal_features = stage(roi_features, proposal_features, boxes)
            outputs.append({"cls_logits": logits, "pred_boxes": pred_boxes})
            boxes = pred_boxes.detach()  # each stage learns its own refinement
        return outputs


@dataclass
class MatchedPairs:
    """The Hungarian-matched (prediction, ground truth) pairs of one stage, over the batch."""

    image_ids: Tensor  # [P] image of each pair
    pred_ids: Tensor  # [P] proposal index within its image
    logits: Tensor  # [P, C] class logits of the matched predictions (with graph)
    pred_boxes: Tensor  # [P, 4] their decoded boxes (xyxy, with graph)
    gt_labels: Tensor  # [P] int64
    gt_boxes: Tensor  # [P, 4] xyxy

    def scores_and_ious(self) -> tuple[Tensor, Tensor]:
        """Predicted probability of the ground-truth class [P] and IoU with it [P]."""
        scores = self.logits.gather(1, self.gt_labels[:, None]).squeeze(1).float().sigmoid()
        return scores, box_ops.elementwise_box_iou(self.pred_boxes, self.gt_boxes)


class SparseRCNN(nn.Module):
    """Backbone + FPN -> :class:`SparseRCNNHead` -> (set losses | top-k detections).

    ``forward(images, targets)`` returns ``(losses, stats)`` in training, like
    :class:`~detectors.models.dense.DenseDetector`: per stage ``k`` (0 = first,
    ``num_stages - 1`` = the one used at inference) ``loss_cls_s{k}``, ``loss_l1_s{k}``,
    ``loss_giou_s{k}`` and, when ``correlation.weight > 0``, ``loss_corr_s{k}``. In evaluation it
    returns per image ``boxes`` [K, 4], ``scores`` [K], ``labels`` [K] (K ≤
    ``max_detections``, by decreasing score) and, with targets, ``pos_scores``/``pos_ious``
    of the last stage's matched proposals (β_img).

    Image sizes (proposal scale, L1 normalisation, clipping) are each image's
    ``target["size"]`` when targets carry it (the reference's un-padded sizes), else the
    padded input's.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: SparseRCNNHead,
        matcher: HungarianMatcher,
        num_classes: int,
        cls_loss: FocalLoss,
        cls_weight: float,
        l1_weight: float,
        giou_weight: float,
        correlation: CorrelationLoss,
        max_detections: int,
    ) -> None:
        """``cls_weight``, ``l1_weight``, ``giou_weight``: the set loss's weights per stage
        (focal, L1 on boxes over the image's ``[w, h, w, h]``, 1 − GIoU); ``correlation``
        pools by batch or image (an RoI head has no FPN-level pools)."""
        super().__init__()
        if correlation.pool == "level":
            raise ValueError("Sparse R-CNN has no FPN-level pools; pool by batch or image")
        self.backbone = backbone
        self.head = head
        self.matcher = matcher
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.correlation = correlation
        self.max_detections = max_detections
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.iteration = 0  # set by the training loop (nothing here reads it)

    # ----------------------------------------------------------------------- forward
    def forward(self, images: Tensor, targets: Targets | None = None) -> Any:
        """Training: ``(losses, stats)``; evaluation: a list of detections per image."""
        mean, std = self.pixel_mean, self.pixel_std
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        features = self.backbone((images - mean) / std)
        image_whwh = self.image_whwh(images, targets)
        stage_outputs = self.head(features, image_whwh)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.losses(stage_outputs, targets, image_whwh)
        return self.postprocess(stage_outputs[-1], targets, image_whwh)

    @staticmethod
    def image_whwh(images: Tensor, targets: Targets | None) -> Tensor:
        """``[w, h, w, h]`` per image [B, 4] (float32)."""
        h, w = images.shape[-2:]
        sizes = [(h, w)] * images.shape[0]
        if targets is not None and all("size" in t for t in targets):
            sizes = [tuple(t["size"]) for t in targets]
        return torch.tensor(
            [[sw, sh, sw, sh] for sh, sw in sizes], dtype=torch.float32, device=images.device
        )

    # ------------------------------------------------------------------------ losses
    def match(
        self, outputs: dict[str, Tensor], targets: Targets, image_whwh: Tensor
    ) -> MatchedPairs:
        logits, pred_boxes = outputs["cls_logits"], outputs["pred_boxes"]
        matches = self.matcher(logits.detach(), pred_boxes.detach(), targets, image_whwh)
        image_ids = torch.cat(
            [torch.full_like(pred_idx, b) for b, (pred_idx, _) in enumerate(matches)]
        )
        pred_ids = torch.cat([pred_idx for pred_idx, _ in matches])
        gt_boxes = [t["boxes"][gt_idx] for t, (_, gt_idx) in zip(targets, matches)]
        gt_labels = [t["labels"][gt_idx] for t, (_, gt_idx) in zip(targets, matches)]
        return MatchedPairs(
            image_ids=image_ids,
            pred_ids=pred_ids,
            logits=logits[image_ids, pred_ids],
            pred_boxes=pred_boxes[image_ids, pred_ids],
            gt_labels=torch.cat(gt_labels).long(),
            gt_boxes=torch.cat(gt_boxes).to(pred_boxes.dtype),
        )

    def losses(
        self, stage_outputs: list[dict[str, Tensor]], targets: Targets, image_whwh: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every stage's set loss (deep supervision), normalised by the number of ground
        truths averaged over DDP workers, as the reference does."""
        num_gt = sum(len(t["labels"]) for t in targets)
        normalizer = global_mean(image_whwh.new_tensor(float(num_gt))).clamp(min=1.0)
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        skipped = 0.0
        last = len(stage_outputs) - 1
        device = image_whwh.device  # stats live with the losses (the loop stacks them)
        for k, outputs in enumerate(stage_outputs):
            pairs = self.match(outputs, targets, image_whwh)
            losses |= {
                f"{name}_s{k}": value
                for name, value in self.set_losses(outputs, pairs, image_whwh, normalizer).items()
            }
            loss_corr, coefficient, num_skipped = self.correlation_loss(pairs, len(targets))
            if loss_corr is not None:
                losses[f"loss_corr_s{k}"] = loss_corr
            stats[f"corr_coefficient_s{k}"] = torch.tensor(coefficient, device=device)
            skipped += num_skipped
            if k == last:  # the names every detector logs describe the predicting stage
                stats["corr_coefficient"] = stats[f"corr_coefficient_s{k}"]
                stats["num_pos"] = torch.tensor(float(len(pairs.pred_ids)), device=device)
        stats["corr_skipped_pools"] = torch.tensor(skipped, device=device)
        return losses, stats

    def set_losses(
        self,
        outputs: dict[str, Tensor],
        pairs: MatchedPairs,
        image_whwh: Tensor,
        normalizer: Tensor,
    ) -> dict[str, Tensor]:
        """Focal loss over every (proposal, class) and L1 + GIoU over matched pairs."""
        logits = outputs["cls_logits"].float()  # [B, N, C]
        cls_targets = torch.zeros_like(logits)
        cls_targets[pairs.image_ids, pairs.pred_ids, pairs.gt_labels] = 1.0
        loss_cls = self.cls_loss(logits.flatten(0, 1), cls_targets.flatten(0, 1)).sum()
        if len(pairs.pred_ids):
            whwh = image_whwh[pairs.image_ids]  # [P, 4]
            loss_l1 = (pairs.pred_boxes / whwh - pairs.gt_boxes / whwh).abs().sum()
            loss_giou = (1 - box_ops.elementwise_giou(pairs.pred_boxes, pairs.gt_boxes)).sum()
        else:  # keep the box branch in the graph (DDP expects every parameter to get a grad)
            loss_l1 = loss_giou = outputs["pred_boxes"].sum() * 0
        return {
            "loss_cls": self.cls_weight * loss_cls / normalizer,
            "loss_l1": self.l1_weight * loss_l1 / normalizer,
            "loss_giou": self.giou_weight * loss_giou / normalizer,
        }

    def correlation_loss(
        self, pairs: MatchedPairs, batch_size: int
    ) -> tuple[Tensor | None, float, int]:
        """``λ_corr · (1 − ρ(IoU, s))`` over one stage's matched pairs (None when λ = 0),
        ρ for logging, and the number of skipped pools (pools: the batch or each image)."""
        scores, ious = pairs.scores_and_ious()
        loss, out = self.correlation(
            scores, ious, image_ids=pairs.image_ids, num_images=batch_size
        )
        return loss, out.coefficient, out.num_skipped

    # ------------------------------------------------------------------ post-processing
    @torch.no_grad()
    def postprocess(
        self, outputs: dict[str, Tensor], targets: Targets | None, image_whwh: Tensor
    ) -> list[dict[str, Tensor]]:
        """Top ``max_detections`` (proposal, class) pairs of the last stage per image, by
        sigmoid score; boxes clipped to the image. No NMS."""
        logits, pred_boxes = outputs["cls_logits"], outputs["pred_boxes"]
        b, n, c = logits.shape
        k = min(self.max_detections, n * c)
        scores, flat_idx = logits.float().sigmoid().flatten(1).topk(k, dim=1)  # [B, K]
        results = []
        for i in range(b):
            w, h = image_whwh[i, 0].item(), image_whwh[i, 1].item()
            boxes = box_ops.clip_boxes(pred_boxes[i, flat_idx[i] // c].float(), h, w)
            results.append({"boxes": boxes, "scores": scores[i], "labels": flat_idx[i] % c})
        if targets is not None:
            pairs = self.match(outputs, targets, image_whwh)
            pos_scores, pos_ious = pairs.scores_and_ious()
            for i, result in enumerate(results):
                mine = pairs.image_ids == i
                result["pos_scores"], result["pos_ious"] = pos_scores[mine], pos_ious[mine]
        return results
