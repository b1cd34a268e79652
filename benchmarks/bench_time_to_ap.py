"""Time to AP of the tiny preset: the previous recipe and the current one, side by side.

Both recipes train at the same time, each in its own process pinned to its own core (one
thread each), so whatever else loads the machine slows both alike; each evaluates COCO AP
on the synthetic val split every ``--eval-every`` iterations. Time to AP is the training
time (evaluations excluded) at the first evaluation reaching ``--goal``; the headline is
the ratio previous / current. Writes ``results/bench/time_to_ap.{md,json,png}``.

    .venv/bin/python benchmarks/bench_time_to_ap.py [--eval-every 250] [--goal 0.5]

A curve of one run with periodic evaluation is the curve of that schedule: an intermediate
point of a schedule with learning-rate drops understates what a shorter schedule would reach
at that time (the previous recipe's steps sit at 75% and 90%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tiny preset before the speed work (commit 566df3c), as overrides of today's preset.
PREVIOUS = {
    "train.iterations": 1500,
    "train.batch_size": 16,
    "train.schedule": "step",
    "train.lr": 0.006,
    "train.warmup_iters": 30,
    "train.lr_steps": [0.75, 0.9],
    "train.ema_decay": 0.0,
    "train.log_every": 25,
    "data.image_size": 128,
    "model.backbone": "tiny",
}
RECIPES = {"previous": PREVIOUS, "current": {}}


def run_one(overrides: dict[str, Any], eval_every: int, out: Path) -> None:
    """Child process: train one recipe, append every evaluation to ``out`` (JSON lines)."""
    import torch

    from detectors.config import load_config
    from detectors.engine import run_training

    torch.set_num_threads(1)
    cfg = load_config("tiny", overrides={**overrides, "train.eval_every": eval_every})

    def report(record: dict[str, Any], checkpoint: Any) -> None:
        if "val/AP" not in record:
            return
        point = {
            "iteration": record["iteration"],
            "train_s": record["train/elapsed_s"] - record["train/eval_time_s"],
            "AP": record["val/AP"],
            "AP50": record["val/AP50"],
            "beta_cls": record["val/beta_cls"],
        }
        with out.open("a") as f:
            f.write(json.dumps(point) + "\n")

    with tempfile.TemporaryDirectory() as work:
        run_training(cfg, out_dir=Path(work), cache_dir=ROOT / ".corrtune", report=report)


def time_to(points: list[dict[str, float]], goal: float) -> float | None:
    return next((p["train_s"] for p in points if p["AP"] >= goal), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--goal", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/time_to_ap")
    parser.add_argument("--child", nargs=3, metavar=("RECIPE", "EVAL_EVERY", "OUT"))
    args = parser.parse_args()
    if args.child:
        name, every, out = args.child
        run_one(RECIPES[name], int(every), Path(out))
        return
    from detectors.config import flatten, load_config
    from detectors.engine import build_datasets

    build_datasets(load_config("tiny"), ROOT / ".corrtune")  # the set, made once
    load_before = os.getloadavg()[0]
    logs = {name: Path(tempfile.mkstemp(suffix=".jsonl")[1]) for name in RECIPES}
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    procs = {
        name: subprocess.Popen(
            [
                "taskset",
                "-c",
                str(core % (os.cpu_count() or 1)),
                sys.executable,
                __file__,
                "--child",
                name,
                str(args.eval_every),
                str(logs[name]),
            ],
            env=env,
        )
        for core, name in enumerate(RECIPES)
    }
    # The load while they run (sampled every 10 s): what else the machine did meanwhile.
    loads = [load_before]
    while any(proc.poll() is None for proc in procs.values()):
        time.sleep(10)
        loads.append(os.getloadavg()[0])
    for name, proc in procs.items():
        if proc.returncode != 0:
            raise SystemExit(f"the {name} recipe failed")
    curves = {
        name: [json.loads(line) for line in log.read_text().splitlines()]
        for name, log in logs.items()
    }
    reached = {name: time_to(points, args.goal) for name, points in curves.items()}
    ratio = (
        reached["previous"] / reached["current"]
        if reached["previous"] and reached["current"]
        else None
    )
    result = {
        "command": "python benchmarks/bench_time_to_ap.py "
        f"--eval-every {args.eval_every} --goal {args.goal}",
        "recipes": {
            name: {
                k: v
                for k, v in flatten(load_config("tiny", overrides=o)).items()
                if k.startswith(("train.", "data.image_size", "model."))
            }
            for name, o in RECIPES.items()
        },
        "curves": curves,
        "goal_AP": args.goal,
        "time_to_goal_s": reached,
        "ratio_previous_over_current": ratio,
        "wall_s": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"one core and one thread per recipe, 1-minute load average while they ran: "
        f"median {sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f} (2.0 = both "
        "recipes alone)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(result, args.out.with_suffix(".png").name))
    print(markdown(result, ""))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, points in result["curves"].items():
        ax.plot([p["train_s"] for p in points], [p["AP"] for p in points], "o-", label=name)
    ax.axhline(result["goal_AP"], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("training seconds (one core, evaluations excluded)")
    ax.set_ylabel("COCO AP (synthetic val)")
    ax.set_title("tiny preset: previous vs current recipe", fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(r: dict[str, Any], png: str) -> str:
    def fmt(value: float | None) -> str:
        return f"{value:.0f} s" if value is not None else "not reached"

    ratio = r["ratio_previous_over_current"]
    lines = [
        "# Time to AP: the tiny preset's previous and current recipes, side by side",
        "",
        f"`{r['command']}` — {r['machine']}; {r['wall_s']:.0f} s wall.",
        "",
        f"Time to AP >= {r['goal_AP']}: previous {fmt(r['time_to_goal_s']['previous'])}, "
        f"current {fmt(r['time_to_goal_s']['current'])}"
        + (f"; ratio previous / current **{ratio:.2f}x**." if ratio else "."),
        "",
        "| recipe | iteration | training s | AP | AP50 | β_cls |",
        "|---|---|---|---|---|---|",
    ]
    for name, points in r["curves"].items():
        lines += [
            f"| {name} | {p['iteration']} | {p['train_s']:.0f} | {p['AP']:.3f} | "
            f"{p['AP50']:.3f} | {p['beta_cls']:.3f} |"
            for p in points
        ]
    differs = {
        k: (r["recipes"]["previous"][k], r["recipes"]["current"][k])
        for k in r["recipes"]["current"]
        if r["recipes"]["previous"][k] != r["recipes"]["current"][k]
    }
    lines += ["", "What differs (previous -> current):", ""]
    lines += [f"- `{k}`: {a} -> {b}" for k, (a, b) in differs.items()] or ["- nothing"]
    lines += [
        "",
        "Intermediate points of a schedule with learning-rate drops understate what a shorter",
        "schedule would reach at that time; training seconds exclude the evaluations.",
    ]
    if png:
        lines += ["", f"![time to AP]({png})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
