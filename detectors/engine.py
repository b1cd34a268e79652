"""Training and evaluation: a short step, hooks around it, one composition function.

``Trainer.run_step`` only loads a batch, computes the losses, backpropagates and steps;
logging, evaluation, checkpoints and reporting are :class:`Hook` objects. ``run_training``
composes data, model, optimizer and hooks from an :class:`ExperimentConfig`; the
orchestrator's Ray Train workers and ``corrtune train`` both call it. Plain PyTorch: works
with or without ``torch.distributed`` initialized (DDP when the world is larger than 1).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from detectors import box_ops, jsonio
from detectors.config import ExperimentConfig, TrainConfig, to_dict
from detectors.data import VOCDataset, make_loader, set_epoch
from detectors.data.splits import build_split
from detectors.data.splits import data_root as data_root  # engine.data_root, as before
from detectors.fit import fit_config
from detectors.metrics import evaluate_detections, voc_map
from detectors.models import build_detector


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite. Training stops; the checkpoint written before it
    (if any: ``run_training``'s message says where) is the last good state."""


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
    """Linear warm-up from ``warmup_factor``, then 10x drops at ``lr_steps`` (fractions) or a
    half cosine from 1 to 0 over the steps after the warm-up (``schedule``)."""
    if cfg.schedule == "cosine":
        span = max(cfg.iterations - cfg.warmup_iters, 1)
        done = min(max(iteration - cfg.warmup_iters, 0), span)
        factor = 0.5 * (1 + math.cos(math.pi * done / span))
    else:
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
# Resamples of the validation images behind the final evaluation's ``AP_boot_sd``.
BOOTSTRAP_SAMPLES = 200


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dataset: Any,
    device: torch.device,
    *,
    bootstrap: int = 0,
) -> dict[str, float]:
    """COCO AP, β_img, β_cls, AP bounds and oLRP of ``model`` on ``loader``'s dataset (and,
    with ``bootstrap`` resamples, the evaluation-set noise of AP: ``AP_boot_sd``...).

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
    metrics = evaluate_detections(dataset.coco, detections, pairs, bootstrap=bootstrap)
    if isinstance(dataset, VOCDataset):  # VOC's own measure: difficult objects ignored
        metrics["VOC_mAP"] = voc_map(dataset.coco, detections)["mAP"]
        metrics["VOC07_mAP"] = voc_map(dataset.coco, detections, use_07_metric=True)["mAP"]
    return metrics


# ------------------------------------------------------------------------------- trainer
@dataclass
class StepOutput:
    losses: dict[str, float]
    stats: dict[str, float]
    seconds: float = 0.0  # wall time of the step: its batch, forward, backward, update


@dataclass
class StepRecord:
    """What the hooks of one step put together: the metrics to report (nothing is reported
    when they stay empty) and the checkpoint written with them."""

    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


class Hook:
    """Called around training, in this order: ``before_train``; per iteration
    ``after_step`` (``trainer.iteration`` counts finished steps; hooks run in their list
    order and add to the step's ``record``); ``after_train``, also when training stops on
    an error. ``state_dict``/``load_state_dict`` carry a hook's counters through a
    checkpoint, so a resumed run goes on counting (times, windows) where it stopped."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
    # fp16 needs loss scaling (its gradients underflow); a no-op for bf16, fp32 and CPUs.
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        enabled = self.cfg.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)
        self.autocast = autocast_enabled(self.cfg.amp, self.device)

    @property
    def detector(self) -> nn.Module:
        """The detector itself (unwrapped from DDP): what checkpoints hold."""
        return trainer_model(self.model)

    @property
    def last_step(self) -> bool:
        return self.iteration >= self.cfg.iterations

    def run_step(self, batch: Any) -> StepOutput:
        images, targets = batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.scaled_lr * lr_factor(self.iteration, self.cfg)
        # Assigners with a warm-up read it (nn.Module types attributes as tensors or modules).
        self.detector.iteration = self.iteration  # type: ignore[assignment]
        with torch.autocast(self.device.type, dtype=_AMP[self.cfg.amp], enabled=self.autocast):
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
        try:
            batches = infinite(self.loader, start_iteration=self.iteration)
            while not self.last_step:
                started = time.perf_counter()
                out = self.run_step(next(batches))
                out.seconds = time.perf_counter() - started
                record = StepRecord()
                for hook in self.hooks:
                    hook.after_step(self, out, record)
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def hook_states(self) -> dict[str, dict[str, Any]]:
        return {type(h).__name__: h.state_dict() for h in self.hooks}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def autocast_enabled(amp: str, device: torch.device) -> bool:
    """Whether ``train.amp`` turns autocast on for ``device``; where it cannot, the run
    trains in fp32 and warns once (bf16 on a CPU without native bf16 is slower than fp32;
    fp16 autocast and its GradScaler are for CUDA)."""
    if amp == "off":
        return False
    if device.type == "cuda":
        return True
    if amp == "bf16" and device.type == "cpu" and cpu_has_native_bf16():
        return True
    warnings.warn(
        f"train.amp={amp} on this {device.type} (no native bf16: no avx512_bf16/amx_bf16 flag) "
        "trains in fp32",
        stacklevel=2,
    )
    return False


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CUDA in channels-last memory format (cuDNN's NHWC
    convolutions, which AMP's tensor cores run fastest). Input images can stay NCHW: a
    convolution with a channels-last weight computes channels-last."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def trainer_model(model: nn.Module) -> nn.Module:
    """``model`` unwrapped from DDP."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


_AMP = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path,
    trainer: Trainer,
    cfg: ExperimentConfig,
    record: dict[str, Any] | None = None,
    classes: Sequence[str] = (),
) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint.

    ``record``: the metrics reported with the run's last checkpoint. A run resumed from it
    has nothing left to train and reports them again (its first report of them may never
    have arrived: an orchestrator interrupted while the run was ending). ``classes``: the
    model's class names, in label order (what ``corrtune eval`` checks a dataset against)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": trainer.detector.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "iteration": trainer.iteration,
        "config": to_dict(cfg),
        "hooks": trainer.hook_states(),
        "record": record,
        "classes": list(classes),
        # What evaluations used: the weight average when there is one (corrtune eval).
        "eval_model": next(
            (h.model.state_dict() for h in trainer.hooks if isinstance(h, WeightAverage)), None
        ),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainer: Trainer) -> dict[str, Any]:
    """Restore ``trainer`` (weights, optimizer, iteration, hooks, random state) from
    ``path``; returns the checkpoint's contents."""
    state = torch.load(path, map_location=trainer.device, weights_only=False)
    trainer.detector.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):  # fp16 runs
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.iteration = int(state["iteration"])
    for hook in trainer.hooks:
        hook.load_state_dict(state.get("hooks", {}).get(type(hook).__name__, {}))
    torch.set_rng_state(state["rng"]["torch"].cpu())
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return typing.cast(dict[str, Any], state)


# ------------------------------------------------------------------------- standard hooks
# run_training's hooks, in the order they run after each step: training metrics, then the
# evaluation, then the clock (iteration, progress, times), then the checkpoint (which holds
# the finished record on the last step), then the report.
class TrainMetrics(Hook):
    """Every ``log_every`` iterations (and at the end): the mean of each loss and statistic
    over the window, seconds per step and images per second (of the steps alone: an
    evaluation or a checkpoint in between is not training time), and the learning rate."""

    def __init__(self, *, log_every: int, batch_size: int) -> None:
        self.log_every, self.batch_size = log_every, batch_size
        self.window: dict[str, list[float]] = {}
        self.window_s = 0.0
        self.window_steps = 0

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        for key, value in (out.losses | out.stats).items():
            if not math.isnan(value):
                self.window.setdefault(key, []).append(value)
        self.window_s += out.seconds
        self.window_steps += 1
        if trainer.iteration % self.log_every and not trainer.last_step:
            return
        steps = max(self.window_steps, 1)
        record.metrics |= {f"train/{k}": float(np.mean(v)) for k, v in self.window.items()}
        record.metrics["train/sec_per_iter"] = self.window_s / steps
        record.metrics["train/images_per_sec"] = steps * self.batch_size / max(self.window_s, 1e-9)
        record.metrics["train/lr"] = trainer.optimizer.param_groups[0]["lr"]
        self.window, self.window_s, self.window_steps = {}, 0.0, 0


class Evaluation(Hook):
    """Every ``eval_every`` iterations (0: never) and at the end: ``val/<metric>`` for each
    metric of ``evaluate_fn(trainer)``, and the seconds spent evaluating so far."""

    def __init__(self, *, evaluate_fn: Any, eval_every: int) -> None:
        self.evaluate_fn, self.eval_every = evaluate_fn, eval_every
        self.eval_s = 0.0

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        due = self.eval_every and trainer.iteration % self.eval_every == 0
        if not (due or trainer.last_step):
            return
        started = time.perf_counter()
        record.metrics |= {f"val/{k}": v for k, v in self.evaluate_fn(trainer).items()}
        self.eval_s += time.perf_counter() - started
        record.metrics["train/eval_time_s"] = self.eval_s

    def state_dict(self) -> dict[str, Any]:
        return {"eval_s": self.eval_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eval_s = float(state.get("eval_s", 0.0))


class Clock(Hook):
    """Stamps every record with its iteration, progress and the training time so far
    (``train/elapsed_s``: evaluations and checkpoints included, summed over resumes)."""

    def __init__(self) -> None:
        self.before_s = 0.0  # training time of earlier runs this one resumed
        self.started = 0.0

    def before_train(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)

    @property
    def elapsed_s(self) -> float:
        return self.before_s + (time.perf_counter() - self.started if self.started else 0.0)

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        if not record.metrics:
            return
        record.metrics["iteration"] = trainer.iteration
        record.metrics["progress"] = trainer.iteration / trainer.cfg.iterations
        record.metrics["train/elapsed_s"] = self.elapsed_s
        if trainer.device.type == "cuda":
            record.metrics["train/peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before_s = float(state.get("elapsed_s", 0.0))


class WeightAverage(Hook):
    """An exponential moving average of the weights, updated after every step; evaluations
    and checkpoints use it. The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so the
    first steps' random weights fade fast; buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.parameters = {name for name, _ in self.model.named_parameters()}
        self.updates = 0

    @torch.no_grad()
    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = trainer.detector.state_dict()
        for name, averaged in self.model.state_dict().items():
            if name in self.parameters:
                averaged.lerp_(live[name], 1 - decay)
            else:
                averaged.copy_(live[name])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.updates = int(state["updates"])
            self.model.load_state_dict(state["weights"])


class Checkpointing(Hook):
    """Every ``every`` iterations (0: only at the end) writes ``directory/checkpoint.pt``
    (rank 0 writes; every rank's record names it) with the step's finished record."""

    def __init__(
        self, *, directory: Path, every: int, cfg: ExperimentConfig, classes: Sequence[str] = ()
    ) -> None:
        self.directory, self.every, self.cfg = directory, every, cfg
        self.classes = list(classes)
        self.saved_at: int | None = None  # iteration of the latest checkpoint written

    @property
    def path(self) -> Path:
        return self.directory / "checkpoint.pt"

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        due = self.every and trainer.iteration % self.every == 0
        if not (due or trainer.last_step):
            return
        if world()[0] == 0:
            final = dict(record.metrics) if trainer.last_step else None
            save_checkpoint(self.path, trainer, self.cfg, record=final, classes=self.classes)
        self.saved_at = trainer.iteration
        record.checkpoint = self.path

    def describe(self) -> str:
        """Where the latest good checkpoint is, for a message about a failed run."""
        if self.saved_at is None:
            why = "" if self.every else " (train.checkpoint_every is 0: only the end writes one)"
            return f"no checkpoint was written before it{why}"
        return f"the last good checkpoint is {self.path} (iteration {self.saved_at})"


class Reporting(Hook):
    """Hands every non-empty record to ``report(metrics, checkpoint_or_None)`` and keeps
    the final metrics (``val/`` stripped, with the training and evaluation seconds)."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.final: dict[str, float] = {}

    def after_step(self, trainer: Trainer, out: StepOutput, record: StepRecord) -> None:
        if record.metrics:
            self.emit(record.metrics, record.checkpoint, last=trainer.last_step)

    def emit(self, metrics: dict[str, Any], checkpoint: Path | None, *, last: bool) -> None:
        if last:
            self.final = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
            self.final["train_time_s"] = metrics["train/elapsed_s"]  # evaluations included
            self.final["eval_time_s"] = metrics.get("train/eval_time_s", 0.0)
        self.report(metrics, checkpoint)


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
    on_ready: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train ``cfg`` and evaluate it; returns the final metrics (rank 0's view).

    ``report(record, checkpoint)`` receives each logged record (metrics dict, and the path
    of a checkpoint written with it, or None). ``resume_from`` continues a checkpoint.
    ``on_ready()`` is called once data, model and optimizer are built, before training.
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
    model = place_model(build_detector(cfg, num_classes=len(train_set.classes)), device)
    if cfg.train.sync_bn and world_size > 1:  # the config checks that workers are on GPUs
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(model, cfg.train)
    out_dir.mkdir(parents=True, exist_ok=True)

    averaging = (
        WeightAverage(trainer_model(model), decay=cfg.train.ema_decay)
        if cfg.train.ema_decay
        else None
    )

    def evaluate_fn(trainer: Trainer) -> dict[str, float]:
        if rank != 0:
            return {}
        # The last evaluation also measures how much AP would move on other images.
        bootstrap = BOOTSTRAP_SAMPLES if trainer.last_step else 0
        evaluated = averaging.model if averaging is not None else trainer.model
        return evaluate(evaluated, val_loader, val_set, device, bootstrap=bootstrap)

    checkpointing = Checkpointing(
        directory=out_dir, every=cfg.train.checkpoint_every, cfg=cfg, classes=train_set.classes
    )
    reporting = Reporting(report or (lambda record, ckpt: None))
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        loader=train_loader,
        cfg=cfg.train,
        device=device,
        hooks=[
            *([averaging] if averaging is not None else []),
            TrainMetrics(log_every=cfg.train.log_every, batch_size=cfg.train.batch_size),
            Evaluation(evaluate_fn=evaluate_fn, eval_every=cfg.train.eval_every),
            Clock(),
            checkpointing,
            reporting,
        ],
    )
    if resume_from is not None:
        saved = load_checkpoint(resume_from, trainer)
        if trainer.last_step and saved.get("record"):
            # The run had ended: nothing to train. Its last report may never have arrived
            # (the orchestrator was interrupted while it ended), so it is made again.
            reporting.emit(saved["record"], resume_from, last=True)
    if on_ready is not None:
        on_ready()
    try:
        trainer.train()
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"{exc}; {checkpointing.describe()}") from None
    final = reporting.final | {"data_problems": float(sum(train_set.problems.values()))}
    if rank == 0:
        (out_dir / "metrics.json").write_text(jsonio.dumps(final, indent=2, sort_keys=True))
    return final
