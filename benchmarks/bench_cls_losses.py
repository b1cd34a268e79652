"""Per-call cost (forward + backward) of the classification losses, against focal.

Times every member of ``CLASSIFICATION_LOSSES`` on the logits of one training batch:
``loss(logits, targets)`` summed (the element-wise losses) or ``ranking + sorting`` (RS),
then ``backward``. Calls of the losses are interleaved (focal, qfl, vfl, rs, focal, ...)
so machine noise hits them alike; the table gives medians with their interquartile range
and the ratio of medians against focal. Ratios use process CPU time on the CPU (on a shared
machine wall time also counts waiting for a core) and synchronised wall time on CUDA.

Batches (anchors: 9 per location; logits drawn so RS sees a realistic share of negatives
within δ of the lowest positive, the ones it must compare):

- ``tiny``: the ``tiny`` preset, 16 images of 128 px, levels 3..5 (3024 anchors), 5 classes,
  300 positive anchors. Logits as at the start of training (negatives around the prior
  bias −4.6, positives a little above): nearly every negative is relevant, RS's worst case.
- ``coco``: 16 images of 800×1333, levels 3..7 (200,700 anchors), 80 classes, 2400 positive
  anchors; negatives mostly confident (about 1M within δ of the lowest positive), as a few
  thousand iterations into training. 257M elements: skipped on CPU, run with ``--device
  cuda``.

    taskset -c 1 python benchmarks/bench_cls_losses.py [--device cpu] [--repeats 41]
        [--out results/bench/cls_losses]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.losses import (
    CLASSIFICATION_LOSSES,
    ElementwiseClassificationLoss,
    RankSortLoss,
)


@dataclass(frozen=True)
class Batch:
    name: str
    images: int
    anchors: int  # per image, all levels
    classes: int
    positives: int  # positive anchors in the batch
    neg_mean: float  # negatives' logits ~ N(neg_mean, neg_std)
    neg_std: float
    pos_mean: float  # positives' logits (their class column) ~ N(pos_mean, 1)
    cpu: bool  # timed on CPU too


def anchors_per_image(height: int, width: int, levels: range, per_location: int = 9) -> int:
    """Anchor count of an FPN whose level l has stride 2**l (sizes rounded up)."""
    return per_location * sum(-(-height // 2**lv) * -(-width // 2**lv) for lv in levels)


BATCHES = (
    Batch("tiny", 16, anchors_per_image(128, 128, range(3, 6)), 5, 300, -4.6, 1.0, -3.0, True),
    Batch("coco", 16, anchors_per_image(800, 1333, range(3, 8)), 80, 2400, -8.3, 1.5, -2.0, False),
)


def make_inputs(batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Logits [N, C] (a leaf), one-hot targets and IoU targets [N, C], on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    n = batch.images * batch.anchors
    logits = torch.randn(n, batch.classes, generator=gen, device=device)
    logits.mul_(batch.neg_std).add_(batch.neg_mean)
    pos = torch.randperm(n, generator=gen, device=device)[: batch.positives]
    cls = torch.randint(0, batch.classes, (batch.positives,), generator=gen, device=device)
    logits[pos, cls] = torch.randn(batch.positives, generator=gen, device=device) + batch.pos_mean
    one_hot = torch.zeros_like(logits)
    one_hot[pos, cls] = 1.0
    ious = torch.zeros_like(logits)
    ious[pos, cls] = torch.rand(batch.positives, generator=gen, device=device) * 0.6 + 0.35
    return logits.requires_grad_(), one_hot, ious


def step_fn(name: str, logits: Tensor, one_hot: Tensor, ious: Tensor) -> Callable[[], None]:
    loss = CLASSIFICATION_LOSSES[name]()
    if isinstance(loss, ElementwiseClassificationLoss):
        elementwise = loss
        targets = ious if loss.uses_iou_targets else one_hot

        def step() -> None:
            logits.grad = None
            elementwise(logits, targets).sum().backward()

        return step
    assert isinstance(loss, RankSortLoss)
    rank_sort = loss
    flat_logits, flat_targets = logits.view(-1), ious.view(-1)

    def rs_step() -> None:
        logits.grad = None
        ranking, sorting = rank_sort(flat_logits, flat_targets)
        (ranking + sorting).backward()

    return rs_step


def relevant_negatives(logits: Tensor, ious: Tensor, delta: float = 0.5) -> int:
    """How many negatives RS compares: those at most δ below the lowest positive."""
    flat, targets = logits.detach().view(-1), ious.view(-1)
    positive = targets > 0
    return int(((~positive) & (flat >= flat[positive].min() - delta)).sum())


def summary(times_ms: list[float], prefix: str) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(times_ms, n=4)
    return {
        f"{prefix}_median_ms": statistics.median(times_ms),
        f"{prefix}_q1_ms": q1,
        f"{prefix}_q3_ms": q3,
        f"{prefix}_iqr_ms": q3 - q1,
    }


def time_batch(batch: Batch, device: torch.device, repeats: int, warmup: int) -> dict:
    logits, one_hot, ious = make_inputs(batch, device)
    steps = {name: step_fn(name, logits, one_hot, ious) for name in CLASSIFICATION_LOSSES}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                cpu[name].append((time.process_time() - cpu0) * 1e3)
                wall[name].append((time.perf_counter() - wall0) * 1e3)
        print(f"\r{batch.name}: {i + 1}/{warmup + repeats} rounds", end="", file=sys.stderr)
    print(file=sys.stderr)
    rows = {name: summary(wall[name], "wall") | summary(cpu[name], "cpu") for name in steps}
    key = "cpu_median_ms" if device.type == "cpu" else "wall_median_ms"
    for row in rows.values():
        row["ratio_vs_focal"] = row[key] / rows["focal"][key]
    return {
        **asdict(batch),
        "elements": logits.numel(),
        "relevant_negatives": relevant_negatives(logits, ious),
        "losses": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Classification losses: cost of forward + backward per call",
        "",
        f"Command: `{report['command']}`  ",
        f"torch {report['torch']}, device {report['device']} ({report['machine']}), "
        f"{report['threads']} torch thread(s), pinned to CPU(s) {report['affinity']}; load "
        f"average {report['load_before']} before "
        f"and {report['load_after']} after. {report['repeats']} interleaved calls per loss "
        f"after {report['warmup']} warm-up rounds; wall time CUDA-synchronised, CPU time of "
        "the process; IQR = q3 − q1; × focal = ratio of medians to focal's on the same batch, "
        f"of {report['ratio_by']} time.",
        "",
        "| batch | elements | positives | RS relevant negatives | loss | wall median ms "
        "| wall IQR ms | CPU median ms | CPU IQR ms | × focal |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch in report["batches"]:
        for name, row in batch["losses"].items():
            lines.append(
                f"| {batch['name']} | {batch['elements']:,} | {batch['positives']:,} | "
                f"{batch['relevant_negatives']:,} | {name} | {row['wall_median_ms']:.2f} | "
                f"{row['wall_iqr_ms']:.2f} | {row['cpu_median_ms']:.2f} | "
                f"{row['cpu_iqr_ms']:.2f} | {row['ratio_vs_focal']:.2f} |"
            )
    for name in report["skipped"]:
        lines.append(f"| {name} | — | — | — | all | skipped on CPU: run `--device cuda` | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/cls_losses"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = [round(x, 2) for x in os.getloadavg()]
    batches, skipped = [], []
    for batch in BATCHES:
        if device.type == "cpu" and not batch.cpu:
            skipped.append(batch.name)
            continue
        batches.append(time_batch(batch, device, args.repeats, args.warmup))
    machine = f"{platform.machine()} {platform.processor() or platform.platform()}"
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "torch": torch.__version__,
        "device": str(device),
        "machine": machine,
        "threads": args.threads,
        "affinity": sorted(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "ratio_by": "CPU" if device.type == "cpu" else "wall",
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "batches": batches,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
