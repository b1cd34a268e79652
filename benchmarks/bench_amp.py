"""A few training steps of every detector under each ``train.amp``: finite losses, the
GradScaler's loss scale, seconds per step and peak memory.

Every entry of ``DETECTORS`` × ``off`` (fp32) / ``bf16`` / ``fp16``, built and placed as
``run_training`` does (``engine.place_model``: channels-last on CUDA) and trained by
``Trainer.run_step`` (autocast, GradScaler, gradient clipping) on the same random images and
boxes (``bench_throughput.random_batch``). A case passes when every loss is finite. fp16's
GradScaler starts at 2^16 and halves the scale (skipping the update) after each step whose
gradients overflowed; the scale after every step is recorded. Where autocast cannot run
(fp16 on a CPU; bf16 on a CPU without native bf16) the engine trains in fp32 and the row
says so. Seconds per step: the median of the steps after the first (which pays cuDNN's
algorithm search and the allocator's growth).

    python benchmarks/bench_amp.py [--device cuda] [--preset smoke] [--set key=value ...]
        [--size 128] [--batch 2] [--steps 4] [--threads 1] [--out results/bench/amp]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_nms import cpu_name
from bench_throughput import NUM_CLASSES, random_batch

from detectors import engine
from detectors.config import load_config, parse_override
from detectors.models import DETECTORS, build_detector

AMP_MODES = ("off", "bf16", "fp16")


def run_case(
    name: str, amp: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """``args.steps`` training steps of detector ``name`` under ``amp``."""
    overrides = {
        **dict(parse_override(item) for item in args.set),
        "model.name": name,
        "data.image_size": args.size,
        "train.amp": amp,
    }
    cfg = load_config(args.preset, overrides=overrides)
    batch = random_batch(args.batch, args.size, device)
    torch.manual_seed(0)
    model = engine.place_model(build_detector(cfg, NUM_CLASSES), device)
    with warnings.catch_warnings():  # autocast_enabled's "trains in fp32": the row says so
        warnings.simplefilter("ignore")
        trainer = engine.Trainer(
            model=model,
            optimizer=engine.build_optimizer(model, cfg.train),
            loader=[batch],  # type: ignore[arg-type]  # run_step is handed the batch
            cfg=cfg.train,
            device=device,
        )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    scales: list[float] = []
    seconds: list[float] = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = trainer.run_step(batch)  # NonFiniteLossError on a NaN or infinite loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append(out.losses["loss"])
        scales.append(trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0)
    return {
        "detector": name,
        "amp": amp,
        "autocast": trainer.autocast,
        "grad_scaler": trainer.scaler.is_enabled(),
        "finite": True,
        "losses": losses,
        "scale_per_step": scales,
        "skipped_steps": sum(b < a for a, b in zip([65536.0, *scales], scales)),
        "sec_per_step": statistics.median(seconds[1:] or seconds),
        "first_step_s": seconds[0],
        "peak_mem_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "channels_last": next(p for p in model.parameters() if p.dim() == 4).is_contiguous(
            memory_format=torch.channels_last
        ),
        "error": None,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Training steps of every detector under each AMP mode",
        "",
        f"`{report['command']}`",
        "",
        f"{report['device_name']}, torch {report['torch']}; preset `{report['args']['preset']}`"
        f" with {report['args']['set'] or 'no overrides'}, {report['args']['size']} px, "
        f"batch {report['args']['batch']}, {report['args']['steps']} steps per case on random "
        "boxes.",
        "",
        "| detector | amp | autocast | losses (first → last) | scale per step | s/step "
        "| peak MB | result |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for case in report["cases"]:
        if case["error"]:
            lines.append(
                f"| {case['detector']} | {case['amp']} | | | | | | FAIL: {case['error']} |"
            )
            continue
        scale = " ".join(f"{s:g}" for s in case["scale_per_step"]) if case["grad_scaler"] else "-"
        peak = f"{case['peak_mem_mb']:.0f}" if case["peak_mem_mb"] is not None else "-"
        mode = "yes" if case["autocast"] else "-" if case["amp"] == "off" else "no: fp32"
        lines.append(
            f"| {case['detector']} | {case['amp']} | {mode} | {case['losses'][0]:.4g} → "
            f"{case['losses'][-1]:.4g} | {scale} | {case['sec_per_step']:.3f} | {peak} | ok |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--size", type=int, default=128, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detectors", nargs="+", default=sorted(DETECTORS))
    parser.add_argument("--amp", nargs="+", default=list(AMP_MODES), choices=AMP_MODES)
    parser.add_argument("--out", default="results/bench/amp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = []
    for name in args.detectors:
        for amp in args.amp:
            try:
                case = run_case(name, amp, args, device)
            except Exception as exc:  # one broken case is reported; the others still run
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                case = {"detector": name, "amp": amp, "finite": False, "error": first}
            cases.append(case)
            print(
                json.dumps(
                    {
                        k: case.get(k)
                        for k in (
                            "detector",
                            "amp",
                            "autocast",
                            "scale_per_step",
                            "sec_per_step",
                            "error",
                        )
                    }
                ),
                flush=True,
            )
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "args": vars(args),
        "cases": cases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    sys.exit(1 if any(c["error"] for c in cases) else 0)


if __name__ == "__main__":
    main()
