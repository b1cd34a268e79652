"""What a sweep will cost before it runs (``corrtune sweep SPACE --dry-run``).

Per trial: ``iterations × seconds per iteration + evaluations × seconds per evaluation +
overhead`` (start-up and tear-down of the trial's Ray Train job). The sweep's wall time is
the sum over its trials divided by the trials run at once; GPU-hours are each trial's wall
time × workers × GPUs per worker.

- Seconds per iteration and per evaluation are measured by running a few training steps
  and one evaluation of the base config in this process, through the same code as a trial
  (:func:`detectors.engine.run_training`). Skipped (``--no-measure``, or when the trials
  need a GPU this machine lacks): then taken from the sweep's earlier finished trials, or
  "not measured".
- The overhead comes from the sweep's earlier finished trials (their wall time minus their
  training time) when there are any, else from :data:`TYPICAL_OVERHEAD_S`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import ExperimentConfig
from orchestrator.progress import format_s
from orchestrator.space import PlannedTrial, Space
from orchestrator.tracking import Ledger

# Seconds of start-up and tear-down per trial (wall time − training time), median of the
# smoke trials of results/bench/sweep_overhead.md: a 2-core CPU machine shared with other
# jobs, corrtune's Ray settings.
TYPICAL_OVERHEAD_S = 20.0
MEASURED_STEPS = 3  # timed training steps, after one warm-up step


@dataclass(frozen=True)
class StepTiming:
    sec_per_iter: float  # NaN: not measured
    sec_per_eval: float  # NaN: not measured
    source: str  # how the figures were obtained, for the printout


@dataclass(frozen=True)
class CostEstimate:
    per_trial_s: list[float]  # estimated wall time of each trial to run
    concurrency: int
    overhead_s: float
    overhead_source: str
    timing: StepTiming
    gpu_hours: float
    cpu_hours: float

    @property
    def wall_s(self) -> float:
        return sum(self.per_trial_s) / max(1, self.concurrency)

    def describe(self) -> str:
        t = self.timing
        if not math.isfinite(t.sec_per_iter):
            return (
                f"cost estimate: not measured ({t.source}); {len(self.per_trial_s)} trial(s), "
                f"{self.concurrency} at a time, each + {self.overhead_s:.0f} s of overhead "
                f"({self.overhead_source})"
            )
        per_eval = (
            f", {t.sec_per_eval:.2f} s per evaluation" if math.isfinite(t.sec_per_eval) else ""
        )
        mean = statistics.fmean(self.per_trial_s) if self.per_trial_s else 0.0
        return "\n".join(
            [
                f"cost estimate: {t.sec_per_iter:.3f} s per iteration{per_eval} ({t.source})",
                f"  + {self.overhead_s:.0f} s per trial of start-up and tear-down "
                f"({self.overhead_source})",
                f"  = {format_s(mean)} per trial; {len(self.per_trial_s)} trial(s), "
                f"{self.concurrency} at a time: about {format_s(self.wall_s)} of wall time, "
                f"{self.gpu_hours:.3f} GPU-hours, {self.cpu_hours:.3f} CPU-hours",
            ]
        )


def evaluations(cfg: ExperimentConfig) -> int:
    """Evaluations in one trial: every ``eval_every`` iterations, and at the end."""
    every = cfg.train.eval_every
    periodic = cfg.train.iterations // every if every else 0
    return periodic + (0 if every and cfg.train.iterations % every == 0 else 1)


def estimate_cost(
    space: Space,
    configs: list[ExperimentConfig],
    timing: StepTiming,
    *,
    concurrency: int,
    overhead_s: float,
    overhead_source: str,
) -> CostEstimate:
    """The estimate for the trials of ``configs`` (one per trial still to run)."""
    per_eval = timing.sec_per_eval if math.isfinite(timing.sec_per_eval) else 0.0
    per_trial = [
        c.train.iterations * timing.sec_per_iter + evaluations(c) * per_eval + overhead_s
        for c in configs
    ]
    res = space.resources
    hours = sum(per_trial) / 3600 if math.isfinite(timing.sec_per_iter) else math.nan
    return CostEstimate(
        per_trial_s=per_trial,
        concurrency=max(1, min(concurrency, len(configs) or 1)),
        overhead_s=overhead_s,
        overhead_source=overhead_source,
        timing=timing,
        gpu_hours=hours * res.workers * res.gpus_per_worker,
        cpu_hours=hours * res.workers * res.cpus_per_worker,
    )


def measure_steps(
    cfg: ExperimentConfig, cache_dir: Path, steps: int = MEASURED_STEPS
) -> StepTiming:
    """Seconds per training iteration (median of ``steps`` after a warm-up step) and per
    evaluation, measured by running ``cfg`` for ``steps + 1`` iterations in this process
    with the trial's own code (data loading, model, optimizer, hooks, final evaluation).

    A synthetic dataset not generated yet is generated into a temporary folder, so a dry
    run leaves nothing behind.
    """
    import torch

    from detectors.engine import run_training

    train = dataclasses.replace(
        cfg.train, iterations=steps + 1, log_every=1, eval_every=0, checkpoint_every=0
    )
    cfg = dataclasses.replace(cfg, train=train)
    threads = torch.get_num_threads()
    records: list[tuple[float, dict[str, Any]]] = []  # (arrival time, record)
    with tempfile.TemporaryDirectory(prefix="corrtune-estimate-") as tmp:
        cache = cache_dir if (cache_dir / "data").exists() else Path(tmp) / "cache"
        run_training(
            cfg,
            out_dir=Path(tmp) / "out",
            cache_dir=cache,
            report=lambda record, _: records.append((time.perf_counter(), record)),
        )
    torch.set_num_threads(threads)  # run_training sets the trial's thread count
    per_iter = [float(r["train/sec_per_iter"]) for _, r in records if "train/sec_per_iter" in r]
    sec_per_iter = statistics.median(per_iter[1:] or per_iter)
    (t_last, last), t_before = records[-1], records[-2][0] if len(records) > 1 else math.nan
    # The last report follows the last step and the final evaluation (and checkpoint).
    sec_per_eval = float(last.get("train/eval_time_s", t_last - t_before - sec_per_iter))
    device = "GPU" if cfg.train.use_gpu else f"CPU, {cfg.train.num_threads or threads} thread(s)"
    return StepTiming(
        sec_per_iter=sec_per_iter,
        sec_per_eval=sec_per_eval,
        source=f"measured: {steps} steps of the base config here, {device}",
    )


def timing_from_ledger(ledger: Ledger) -> StepTiming | None:
    """Seconds per iteration of the sweep's earlier finished trials (their training time,
    evaluations included, over their iterations), or None without any."""
    per_iter = []
    for entry in ledger.trials.values():
        metrics = entry.get("metrics", {})
        iters = metrics.get("iterations")
        if entry.get("status") == "FINISHED" and iters and "train_time_s" in metrics:
            per_iter.append(metrics["train_time_s"] / iters)
    if not per_iter:
        return None
    return StepTiming(
        statistics.median(per_iter),
        math.nan,
        f"from {len(per_iter)} finished trial(s) of this sweep, evaluations included",
    )


def overhead_from_ledger(ledger: Ledger) -> tuple[float, str]:
    """Per-trial overhead (wall time − training time) of the sweep's finished trials, or
    the typical figure without any."""
    gaps = [
        e["metrics"]["trial_wall_s"] - e["metrics"]["train_time_s"]
        for e in ledger.trials.values()
        if e.get("status") == "FINISHED"
        and {"trial_wall_s", "train_time_s"} <= set(e.get("metrics", {}))
    ]
    if gaps:
        return statistics.median(gaps), f"median of {len(gaps)} finished trial(s) of this sweep"
    return TYPICAL_OVERHEAD_S, "typical on a 2-core machine, results/bench/sweep_overhead.md"


def not_measurable(space: Space) -> str:
    """Why the base config cannot be timed here ("" when it can)."""
    if space.resources.gpus_per_worker > 0:
        import torch

        if not torch.cuda.is_available():
            return "the trials need a GPU and this machine has none"
    return ""


def sweep_estimate(
    space: Space,
    plan: list[tuple[PlannedTrial, ExperimentConfig]],
    base: ExperimentConfig,
    ledger: Ledger,
    *,
    cache_dir: Path,
    concurrency: int,
    measure: bool = True,
) -> CostEstimate:
    """The estimate ``--dry-run`` prints for the trials not finished yet."""
    finished = ledger.finished()
    todo = [c for t, c in plan if t.key not in finished]
    if space.method == "tpe":  # TPE's trials are not known yet: the base config, N times
        todo = [base] * max(0, space.max_trials - len(finished))
    why_not = "--no-measure" if not measure else not_measurable(space)
    timing = None
    if not why_not:
        use_gpu = space.resources.gpus_per_worker > 0
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, use_gpu=use_gpu))
        timing = measure_steps(base, cache_dir)
    timing = timing or timing_from_ledger(ledger) or StepTiming(math.nan, math.nan, why_not)
    overhead, source = overhead_from_ledger(ledger)
    return estimate_cost(
        space,
        todo,
        timing,
        concurrency=concurrency,
        overhead_s=overhead,
        overhead_source=source,
    )
