"""Training and evaluation: a short step, hooks around it, one composition function.

``Trainer.run_step`` only loads a batch, computes the losses, backpropagates and steps;
logging, evaluation, checkpoints and reporting are :class:`Hook` objects. ``run_training``
composes data, model, optimizer and hooks from an :class:`ExperimentConfig`; the
orchestrator's Ray Train workers and ``corrtune train`` both call it. Plain PyTorch: works
with or without ``torch.distributed`` initialized (DDP when the world is larger than 1).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from detectors import box_ops
from detectors.config import ExperimentConfig, TrainConfig, to_dict
from detectors.data import VOCDataset, make_loader, set_epoch
from detectors.data.splits import build_split
from detectors.data.splits import data_root as data_root  # engine.data_root, as before
from detectors.fit import fit_config
from detectors.metrics import evaluate_detections, voc_map
from detectors.models import build_detector


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (standard for detectors; it hurts GroupNorm heads).
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.scaled_lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.scaled_lr)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_factor`` then 10x drops at ``lr_steps`` (fractions)."""
    factor = 0.1 ** sum(iteration >= int(s * cfg.iterations) for s in cfg.lr_steps)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def infinite(loader: DataLoader, start_iteration: int = 0) -> Iterator[Any]:
    """Batches forever, epoch after epoch, starting where iteration ``start_iteration`` is.

    Each epoch's order and augmentations depend only on (seed, rank, epoch), and a resumed
    run skips the batches of its epoch already trained on, so it sees what an uninterrupted
    run would have seen.
    """
    per_epoch = max(len(loader), 1)
    epoch, skip = divmod(start_iteration, per_epoch)
    while True:
        set_epoch(loader, epoch)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        skip = 0
        yield from batches
        epoch += 1


def to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets
    ]


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, dataset: Any, device: torch.device
) -> dict[str, float]:
    """COCO AP, β_img, β_cls, AP bounds and oLRP of ``model`` on ``loader``'s dataset.

    Detections are mapped back to original image pixels (``boxes / scale``) and given the
    dataset's COCO category ids, so they are scored against ``dataset.coco`` as-is.
    """
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    was_training = net.training
    net.eval()
    detections: list[dict[str, Any]] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for images, targets in loader:
        targets = to_device(targets, device)
        outputs = net(images.to(device), targets)
        for out, target in zip(outputs, targets):
            boxes = box_ops.box_xyxy_to_xywh(out["boxes"] / target["scale"]).cpu().tolist()
            for box, score, label in zip(boxes, out["scores"].tolist(), out["labels"].tolist()):
                detections.append(
                    {
                        "image_id": int(target["image_id"]),
                        "category_id": dataset.category_ids[label],
                        "bbox": box,
                        "score": score,
                    }
                )
            pairs.append((out["pos_scores"].cpu().numpy(), out["pos_ious"].cpu().numpy()))
    net.train(was_training)
    metrics = evaluate_detections(dataset.coco, detections, pairs)
    if isinstance(dataset, VOCDataset):  # VOC's own measure: difficult objects ignored
        metrics["VOC_mAP"] = voc_map(dataset.coco, detections)["mAP"]
        metrics["VOC07_mAP"] = voc_map(dataset.coco, detections, use_07_metric=True)["mAP"]
    return metrics


# ------------------------------------------------------------------------------- trainer
@dataclass
class StepOutput:
    losses: dict[str, float]
    stats: dict[str, float]


class Hook:
    """Called around training, in this order: ``before_train``, then per iteration
    ``after_step``, then ``after_train``. ``trainer.iteration`` counts finished steps."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    cfg: TrainConfig
    device: torch.device
    hooks: Sequence[Hook] = ()
    iteration: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    # fp16 needs loss scaling (its gradients underflow); a no-op for bf16, fp32 and CPUs.
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        enabled = self.cfg.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)

    @property
    def detector(self) -> nn.Module:
        """The detector itself (unwrapped from DDP): what checkpoints hold."""
        net = self.model
        return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net

    def run_step(self, batch: Any) -> StepOutput:
        images, targets = batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.scaled_lr * lr_factor(self.iteration, self.cfg)
        # Assigners with a warm-up read it (nn.Module types attributes as tensors or modules).
        self.detector.iteration = self.iteration  # type: ignore[assignment]
        with torch.autocast(
            self.device.type,
            dtype=_AMP[self.cfg.amp],
            enabled=self.cfg.amp != "off" and self.device.type == "cuda",
        ):
            losses, stats = self.model(images.to(self.device), to_device(targets, self.device))
        total = sum(losses.values())
        assert isinstance(total, Tensor)
        # One device-to-host copy per step for every logged value (not one sync per value).
        names = [*losses, "loss", *stats]
        values = dict(
            zip(
                names,
                torch.stack(
                    [v.detach().float().reshape(()) for v in (*losses.values(), total)]
                    + [v.float().reshape(()) for v in stats.values()]
                ).tolist(),
            )
        )
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration}: "
                + ", ".join(f"{k}={values[k]:.4g}" for k in losses)
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return StepOutput({k: values[k] for k in (*losses, "loss")}, {k: values[k] for k in stats})

    def train(self) -> None:
        for hook in self.hooks:
            hook.before_train(self)
        batches = infinite(self.loader, start_iteration=self.iteration)
        while self.iteration < self.cfg.iterations:
            out = self.run_step(next(batches))
            for hook in self.hooks:
                hook.after_step(self, out)
        for hook in self.hooks:
            hook.after_train(self)


_AMP = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path, trainer: Trainer, cfg: ExperimentConfig, classes: Sequence[str] = ()
) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint.
    ``classes``: the model's class names, in label order (what ``corrtune eval`` checks a
    dataset against)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": trainer.detector.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "iteration": trainer.iteration,
        "config": to_dict(cfg),
        "classes": list(classes),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainer: Trainer) -> None:
    state = torch.load(path, map_location=trainer.device, weights_only=False)
    trainer.detector.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):  # fp16 runs; absent from checkpoints of older versions
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.iteration = int(state["iteration"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])


# ------------------------------------------------------------------------- standard hooks
class PeriodicHook(Hook):
    """Logs averaged training metrics, evaluates and checkpoints on their schedules, and
    hands every record to ``report(record, checkpoint_path_or_None)``."""

    def __init__(
        self,
        *,
        cfg: ExperimentConfig,
        evaluate_fn: Any,
        checkpoint_dir: Path | None,
        report: Any,
        classes: Sequence[str] = (),
    ) -> None:
        self.cfg = cfg
        self.classes = list(classes)
        self.evaluate_fn = evaluate_fn
        self.checkpoint_dir = checkpoint_dir
        self.report = report
        self.window: dict[str, list[float]] = {}
        self.t_start = self.t_window = 0.0
        self.steps_in_window = 0
        self.eval_s = 0.0  # seconds spent evaluating, so far
        self.final: dict[str, float] = {}

    def before_train(self, trainer: Trainer) -> None:
        self.t_start = self.t_window = time.perf_counter()
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        for key, value in (out.losses | out.stats).items():
            if not math.isnan(value):
                self.window.setdefault(key, []).append(value)
        self.steps_in_window += 1
        it, cfg = trainer.iteration, self.cfg.train
        last = it >= cfg.iterations
        record: dict[str, Any] = {}
        if it % cfg.log_every == 0 or last:
            elapsed = time.perf_counter() - self.t_window
            record |= {f"train/{k}": float(np.mean(v)) for k, v in self.window.items()}
            record["train/sec_per_iter"] = elapsed / max(self.steps_in_window, 1)
            record["train/images_per_sec"] = (
                self.steps_in_window * cfg.batch_size / max(elapsed, 1e-9)
            )
            record["train/lr"] = trainer.optimizer.param_groups[0]["lr"]
            self.window, self.steps_in_window = {}, 0
            self.t_window = time.perf_counter()
        t_pause = time.perf_counter()  # evaluation and checkpoints are not training time
        if (cfg.eval_every and it % cfg.eval_every == 0) or last:
            t_eval = time.perf_counter()
            record |= {f"val/{k}": v for k, v in self.evaluate_fn(trainer).items()}
            self.eval_s += time.perf_counter() - t_eval
            record["train/eval_time_s"] = self.eval_s
        checkpoint = None
        if self.checkpoint_dir is not None and (
            (cfg.checkpoint_every and it % cfg.checkpoint_every == 0) or last
        ):
            checkpoint = self.checkpoint_dir / "checkpoint.pt"
            if world()[0] == 0:
                save_checkpoint(checkpoint, trainer, self.cfg, self.classes)
        if record:
            record["iteration"] = it
            record["progress"] = it / cfg.iterations
            record["train/elapsed_s"] = time.perf_counter() - self.t_start
            if trainer.device.type == "cuda":
                record["train/peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            if last:
                self.final = {k[4:]: v for k, v in record.items() if k.startswith("val/")}
                self.final["train_time_s"] = record["train/elapsed_s"]  # evaluations included
                self.final["eval_time_s"] = self.eval_s
            self.report(record, checkpoint)
        self.t_window += time.perf_counter() - t_pause


# ---------------------------------------------------------------------------- composition
def build_datasets(cfg: ExperimentConfig, cache_dir: Path) -> tuple[Any, Any]:
    train = build_split(cfg, "train", cache_dir, train=True)
    return train, build_split(cfg, "val", cache_dir, train=False)


def run_training(
    cfg: ExperimentConfig,
    *,
    out_dir: Path,
    cache_dir: Path,
    report: Any = None,
    resume_from: Path | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Train ``cfg`` and evaluate it; returns the final metrics (rank 0's view).

    ``report(record, checkpoint)`` receives each logged record (metrics dict, and the path
    of a checkpoint written with it, or None). ``resume_from`` continues a checkpoint.
    """
    rank, world_size = world()
    cfg = fit_config(cfg, cache_dir)  # fit.* at auto: numbers from the training boxes
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = device or torch.device(
        f"cuda:{torch.cuda.current_device()}"
        if cfg.train.use_gpu and torch.cuda.is_available()
        else "cpu"
    )
    seed_everything(cfg.train.seed + rank)
    train_set, val_set = build_datasets(cfg, cache_dir)
    per_worker = cfg.train.batch_size // world_size
    train_loader = make_loader(
        train_set,
        per_worker,
        shuffle=True,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        distributed=world_size > 1,
        drop_last=True,
    )
    val_loader = make_loader(
        val_set,
        per_worker,
        shuffle=False,
        seed=0,
        num_workers=cfg.data.num_workers,
        distributed=False,
        drop_last=False,
    )
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    model: nn.Module = build_detector(cfg, num_classes=len(train_set.classes)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and world_size > 1:  # the config checks that workers are on GPUs
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(model, cfg.train)
    out_dir.mkdir(parents=True, exist_ok=True)

    def evaluate_fn(trainer: Trainer) -> dict[str, float]:
        if rank != 0:
            return {}
        return evaluate(trainer.model, val_loader, val_set, device)

    periodic = PeriodicHook(
        cfg=cfg,
        evaluate_fn=evaluate_fn,
        checkpoint_dir=out_dir,
        report=report or (lambda record, ckpt: None),
        classes=train_set.classes,
    )
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        loader=train_loader,
        cfg=cfg.train,
        device=device,
        hooks=[periodic],
    )
    if resume_from is not None:
        load_checkpoint(resume_from, trainer)
    trainer.train()
    final = periodic.final | {"data_problems": float(sum(train_set.problems.values()))}
    if rank == 0:
        (out_dir / "metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    return final
