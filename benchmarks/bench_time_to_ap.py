"""Time to AP of the tiny preset: two recipes side by side (the previous and the current).

Both recipes train at the same time, each in its own process pinned to its own core (one
thread each), so whatever else loads the machine slows both alike; each evaluates COCO AP
on the synthetic val split every ``--eval-every`` iterations. Time to AP is the training
time (evaluations excluded) at the first evaluation reaching ``--goal``; the headline is
the ratio baseline / candidate. Writes ``results/bench/time_to_ap.{md,json,png}``.

    .venv/bin/python benchmarks/bench_time_to_ap.py [--eval-every 250] [--goal 0.5] \
        [--pair previous current]

``--pair`` names the two recipes of ``RECIPES``: ``previous`` (before the speed work),
``current`` (today's preset), ``fp32`` (today's preset with ``train.amp: off``).

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
    "train.amp": "off",
}
RECIPES = {"previous": PREVIOUS, "current": {}, "fp32": {"train.amp": "off"}}


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
    parser.add_argument(
        "--pair",
        nargs=2,
        choices=sorted(RECIPES),
        default=["previous", "current"],
        metavar=("BASELINE", "CANDIDATE"),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of the candidate recipe (repeatable): tries a recipe change",
    )
    parser.add_argument("--child", nargs=3, metavar=("OVERRIDES_JSON", "EVAL_EVERY", "OUT"))
    args = parser.parse_args()
    if args.child:
        overrides, every, out = args.child
        run_one(json.loads(overrides), int(every), Path(out))
        return
    if args.pair[0] == args.pair[1] and not args.set:
        parser.error("--pair names the same recipe twice; --set makes the second differ")
    from detectors.config import flatten, load_config, parse_override
    from detectors.engine import build_datasets

    build_datasets(load_config("tiny"), ROOT / ".corrtune")  # the set, made once
    load_before = os.getloadavg()[0]
    base, cand = args.pair
    sets = dict(parse_override(item) for item in args.set)
    if sets:
        cand = f"{cand} + " + ", ".join(f"{k}={v}" for k, v in sets.items())
    recipes = {base: RECIPES[base], cand: {**RECIPES[args.pair[1]], **sets}}
    logs = {name: Path(tempfile.mkstemp(suffix=".jsonl")[1]) for name in recipes}
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
                json.dumps(recipes[name]),
                str(args.eval_every),
                str(logs[name]),
            ],
            env=env,
        )
        for core, name in enumerate(logs)
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
    ratio = reached[base] / reached[cand] if reached[base] and reached[cand] else None
    result = {
        "command": "python benchmarks/bench_time_to_ap.py "
        f"--eval-every {args.eval_every} --goal {args.goal} --pair {' '.join(args.pair)}"
        + "".join(f" --set {item}" for item in args.set),
        "pair": [base, cand],
        "recipes": {
            name: {
                k: v
                for k, v in flatten(load_config("tiny", overrides=o)).items()
                if k.startswith(("train.", "data.image_size", "model."))
            }
            for name, o in recipes.items()
        },
        "curves": curves,
        "goal_AP": args.goal,
        "time_to_goal_s": reached,
        "ratio_baseline_over_candidate": ratio,
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
    ax.set_title(f"tiny preset: {' vs '.join(result['pair'])} recipe", fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(r: dict[str, Any], png: str) -> str:
    def fmt(value: float | None) -> str:
        return f"{value:.0f} s" if value is not None else "not reached"

    ratio = r["ratio_baseline_over_candidate"]
    base, cand = r["pair"]
    lines = [
        f"# Time to AP: the tiny preset's {base} and {cand} recipes, side by side",
        "",
        f"`{r['command']}` — {r['machine']}; {r['wall_s']:.0f} s wall.",
        "",
        f"Time to AP >= {r['goal_AP']}: {base} {fmt(r['time_to_goal_s'][base])}, "
        f"{cand} {fmt(r['time_to_goal_s'][cand])}"
        + (f"; ratio {base} / {cand} **{ratio:.2f}x**." if ratio else "."),
        "",
        "Training seconds of the whole schedule (last evaluation): "
        + ", ".join(
            f"{name} {points[-1]['train_s']:.0f} s (AP {points[-1]['AP']:.3f})"
            for name, points in r["curves"].items()
        )
        + f"; ratio {base} / {cand} "
        + f"{r['curves'][base][-1]['train_s'] / r['curves'][cand][-1]['train_s']:.2f}x.",
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
        k: (r["recipes"][base][k], r["recipes"][cand][k])
        for k in r["recipes"][cand]
        if r["recipes"][base][k] != r["recipes"][cand][k]
    }
    lines += ["", f"What differs ({base} -> {cand}):", ""]
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
