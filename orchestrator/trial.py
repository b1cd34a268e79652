"""What runs inside Ray for one trial: the Tune function trainable and the Ray Train worker.

Kept apart from the driver's modules (MLflow, reports, the progress display) because Ray
imports this module in every trial actor and every training worker it starts: what it
imports is start-up time paid per trial and per worker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectors.config import ExperimentConfig, from_dict, to_dict
from orchestrator import ray_compat
from orchestrator.space import PlannedTrial, Space, optuna_name, trial_config, trial_key

# Tests only: '{TRIAL_KEY: {"at": "start" | "final_report" | "end", "seconds": S}, ...}'
# makes those trials' rank 0 touch <work>/<key>/paused-<at> and sleep S seconds there: as
# its worker starts, before it reports its final evaluation, after its last report (while
# the run ends), or, ``{"at": "iteration", "iteration": N, ...}``, once after its first
# report at or past iteration N (not in a restored run), so that a test can interrupt the
# sweep, or take a node away, at that moment.
PAUSE_ENV = "CORRTUNE_TEST_PAUSE"

# How long, over its life, a trial's Ray Train run may wait for its workers' resources (a
# lost node to come back, an autoscaler to add one) before the trial fails with the reason.
# Ray Train's own default waits forever: it retries a worker group that cannot start, 60 s
# per start, without a limit. Read by the driver: the value where the sweep is started.
WORKER_WAIT_ENV = "CORRTUNE_WORKER_WAIT_S"
DEFAULT_WORKER_WAIT_S = 900.0  # a cloud GPU node takes minutes to replace
WORKER_START_S = 60.0  # one start of the worker group waits this long (Ray Train's default)
# Restarts after a worker died (a killed process, a lost node), each from the last checkpoint.
MAX_WORKER_FAILURES = 2


class WorkersUnavailable(RuntimeError):
    """A trial's workers could not be placed within the worker wait: its one-line reason."""


def worker_wait_s() -> float:
    """``CORRTUNE_WORKER_WAIT_S`` (seconds, > 0), else the default."""
    try:
        value = float(os.environ.get(WORKER_WAIT_ENV, DEFAULT_WORKER_WAIT_S))
    except ValueError:
        value = DEFAULT_WORKER_WAIT_S
    return value if value > 0 else DEFAULT_WORKER_WAIT_S


def worker_start_limits(wait_s: float) -> tuple[float, int]:
    """(seconds one start of the worker group waits, starts that may time out and be
    retried): together about ``wait_s`` of waiting for workers over the trial's life."""
    per_start = min(WORKER_START_S, wait_s)
    return per_start, max(0, math.ceil(wait_s / per_start) - 1)


class TrialResolver:
    """Turns a Tune trial's config into (planned trial, resolved config), the same way in
    the driver (callback) and in the trial actor (trainable).

    Static plans (grid, random) send ``plan_index``; TPE sends the sampled parameters under
    :func:`optuna_name` and a ``sample`` id that keeps two identical draws apart.
    """

    def __init__(
        self,
        space: Space,
        plan: list[tuple[PlannedTrial, ExperimentConfig]],
        extra: dict[str, Any],
    ) -> None:
        self.space, self.plan, self.extra = space, plan, extra

    def resolve(self, config: dict[str, Any]) -> tuple[PlannedTrial, ExperimentConfig]:
        if "plan_index" in config:
            return self.plan[int(config["plan_index"])]
        overrides = {
            p.key: config[optuna_name(p.key)]
            for p in self.space.parameters
            if optuna_name(p.key) in config
        }
        key = trial_key({**overrides, "sample": config.get("sample", "")}, 0)
        planned = PlannedTrial(key, overrides, 0)
        return planned, trial_config(self.space, overrides, self.extra)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (one DDP rank)."""
    started_at = time.time()
    import ray.train
    import torch

    from detectors.engine import run_training

    cfg = from_dict(loop_config["config"], "trial config")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    # Set when Ray Train restores this run (same RunConfig name and storage after a driver
    # crash, or a retry after a worker died): training continues from that iteration.
    checkpoint = ray.train.get_checkpoint()
    resume_from = None
    resumed_at = 0
    if checkpoint is not None:
        local = Path(loop_config["work_dir"]) / f"restore-rank{rank}"
        resume_from = Path(checkpoint.to_directory(str(local))) / "checkpoint.pt"
        resumed_at = int(torch.load(resume_from, weights_only=False)["iteration"])
    work_dir = Path(loop_config["work_dir"])
    out_dir = work_dir / f"rank{rank}"
    fault = loop_config.get("fault_at_iteration", 0)  # tests: workers that die once
    pause = json.loads(os.environ.get(PAUSE_ENV, "{}")).get(work_dir.name, {})
    if rank != 0:
        pause = {}
    first_report = [True]
    ready_at = [started_at]

    def on_ready() -> None:  # data, model and optimizer are built
        ready_at[0] = time.time()

    stop_marker = loop_config.get("stop_marker", "")
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    at_start = gpu_free_at_start(device) if rank == 0 else {}

    def report(record: dict[str, Any], checkpoint_path: Path | None) -> None:
        if stop_marker and _stop_requested(stop_marker, device):
            raise StopRequested  # Tune stopped the trial: end this run, as if it finished
        if resume_from is not None:
            record = record | {"trial/resumed_from": resumed_at}
        if pause.get("at") == "final_report" and record.get("progress", 0) >= 1:
            _pause(work_dir, pause, stop_marker)
        if first_report[0]:  # where the trial's time goes (see TrackingCallback)
            first_report[0] = False
            record = record | {
                "trial/worker_started_at": started_at,
                "trial/setup_s": ready_at[0] - started_at,
                **at_start,
                "trial/node_ids": ",".join(_node_ids()),  # where this start's ranks run
            }
        if checkpoint_path is not None and rank == 0:
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_path.parent))
            ray.train.report(record, checkpoint=ckpt)
        else:
            ray.train.report(record)
        at_iteration = pause.get("at") == "iteration" and resume_from is None
        if at_iteration and record.get("iteration", 0) >= pause["iteration"]:
            _pause(work_dir, pause, stop_marker)  # after that report (and its checkpoint)
            pause["at"] = "done"  # once
        if fault and resume_from is None and record.get("iteration", 0) >= fault:
            marker = Path(loop_config["work_dir"]) / f"fault-injected-rank{rank}"
            if not marker.exists():  # die once: a retry that found no checkpoint must finish
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                time.sleep(2.0)  # let the controller register the checkpoint just reported
                os._exit(1)  # simulate a worker process dying (OOM kill, lost node)

    if pause.get("at") == "start":
        _pause(work_dir, pause, stop_marker)
    with contextlib.suppress(StopRequested):  # Tune stopped the trial: a normal end
        run_training(
            cfg,
            out_dir=out_dir,
            cache_dir=Path(loop_config["cache_dir"]),
            report=report,
            resume_from=resume_from,
            device=device,
            on_ready=on_ready,
        )
    if pause.get("at") == "end":
        _pause(work_dir, pause, stop_marker)
    if device.type == "cuda":  # hand the memory back before the next trial's workers start
        torch.cuda.empty_cache()


def gpu_free_at_start(device: Any) -> dict[str, float]:
    """``{"trial/gpu_free_mb": MB}``: the device's free memory as the worker starts, before
    it builds anything (CUDA; nothing on a CPU). Trials that follow each other on one GPU
    show there whether the one before released its memory."""
    if device.type != "cuda":
        return {}
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return {"trial/gpu_free_mb": free / 2**20}


def _node_ids() -> list[str]:
    """The Ray node id of every rank, in rank order (every rank calls it, at its first
    report: the ranks report at the same iterations)."""
    import ray
    import torch.distributed as dist

    mine = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [str(n) for n in every]


def _pause(work_dir: Path, pause: dict[str, Any], stop_marker: str) -> None:
    """Wait there (tests); a stop of the trial ends the wait, as it would end real work."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / f"paused-{pause['at']}").touch()
    deadline = time.time() + float(pause["seconds"])
    while time.time() < deadline and not (stop_marker and marker_exists(stop_marker)):
        time.sleep(0.2)


def make_trainable(
    resolver: TrialResolver,
    space: Space,
    storage: str,
    cache_dir: Path,
    work_root: Path,
    inject_worker_fault: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> Callable[[dict], None]:
    resources = space.resources
    wait_s = worker_wait_s()
    per_start, start_retries = worker_start_limits(wait_s)
    env = {ray_compat.WORKER_GROUP_START_TIMEOUT: f"{per_start:g}", **(env or {})}

    def trainable(config: dict[str, Any]) -> None:
        # Read by TorchTrainer in this process and passed on to its controller and workers;
        # a value the user exported on the cluster wins.
        for name, value in env.items():
            os.environ.setdefault(name, value)
        planned, resolved = resolver.resolve(config)
        key, cfg = planned.key, to_dict(resolved)
        marker = f"{storage.rstrip('/')}/{key}/{STOP_MARKER}"
        remove_marker(marker)  # one left by an earlier stop of this trial
        StopsItsTrainRun.stop_marker = marker
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        use_gpu = resources.gpus_per_worker > 0
        cfg["train"]["use_gpu"] = use_gpu
        cfg["train"]["num_workers"] = resources.workers
        worker_res = {"CPU": resources.cpus_per_worker}
        if use_gpu:
            worker_res["GPU"] = resources.gpus_per_worker
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "config": cfg,
                "cache_dir": str(cache_dir),
                "work_dir": str(work_root / key),
                "fault_at_iteration": (inject_worker_fault or {}).get(key, 0),
                "stop_marker": marker,
            },
            scaling_config=ScalingConfig(
                num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=worker_res
            ),
            # The run's name is the trial key: a resumed sweep restarts an interrupted trial
            # under the same name and storage, and Ray Train restores its latest checkpoint.
            run_config=RunConfig(
                name=key,
                storage_path=storage,
                callbacks=[TuneReportCallback()],  # type: ignore[list-item]
                # Ray Train V2's FailureConfig (the stubs know V1's, without the limit).
                failure_config=FailureConfig(  # type: ignore[call-arg]
                    max_failures=MAX_WORKER_FAILURES,
                    # Bounds the wait for workers (Ray's default, -1, retries forever).
                    controller_failure_limit=start_retries,
                ),
            ),
        )
        try:
            trainer.fit()
            # Tune must take the run's last result before this function returns, or its
            # session deadlocks (ray_compat.wait_results_taken): the trial hung at its end.
            ray_compat.wait_results_taken()
        except Exception as exc:
            if not ray_compat.workers_never_placed(exc):
                raise
            each = ", ".join(f"{v:g} {k}" for k, v in worker_res.items())
            raise WorkersUnavailable(
                f"its {resources.workers} worker(s) ({each} each) could not be placed within "
                f"{wait_s:g} s ({WORKER_WAIT_ENV}): a node it ran on was lost and did not come "
                "back, or the cluster is too small; --resume continues it from its last "
                "checkpoint"
            ) from exc

    return ray_compat.with_mixins(trainable, StopsItsTrainRun)


# ------------------------------------------------------------------ stopping a trial
# Tune stops a trial (ASHA, a spent budget, the end of a sweep) by ending its actor. The
# trial's Ray Train run (controller, workers) would die with it, but not its placement group:
# that belongs to the job, and Ray Train's cleaner for it needs the state API of the
# dashboard, which a minimal Ray does not have. The workers' CPUs and GPUs would stay
# reserved until the sweep ends (and a sweep whose stopped trials reserve every CPU hangs).
# So the actor first asks the run to end, through a marker file in the run's storage folder
# that every worker checks before it reports, and waits for it.
STOP_MARKER = "stop-requested"
STOP_TIMEOUT_S = 120.0  # for the workers' next report (an evaluation may come first)


class StopRequested(Exception):
    """Raised in a worker's report when its trial was stopped: the run ends normally."""


class StopsItsTrainRun:
    """Mixin of the trial's Tune actor (added by ``ray_compat.with_mixins``):
    before Tune ends the actor, end its Ray Train run cleanly."""

    stop_marker = ""  # the running trial's marker (one trial at a time per actor)

    def cleanup(self) -> None:
        thread = ray_compat.training_thread()
        if self.stop_marker and thread is not None and thread.is_alive():
            touch_marker(self.stop_marker)
            # Tune takes no more results of this trial, so Ray Train's report to Tune would
            # block on the full queue between them, and the workers with it, short of the
            # report where they see the marker: take (and drop) the results meanwhile.
            results = ray_compat.result_queue()
            deadline = time.time() + STOP_TIMEOUT_S
            while thread.is_alive() and time.time() < deadline:
                if results is None:
                    thread.join(timeout=0.5)
                    continue
                with contextlib.suppress(Exception):  # ray.util.queue.Empty: none came
                    results.get(block=True, timeout=0.5)
        super().cleanup()  # type: ignore[misc]


def _stop_requested(marker: str, device: Any) -> bool:
    """Whether the trial's marker exists, as one decision for all of its DDP workers (one
    that stopped alone would leave the others waiting in their next all-reduce)."""
    import torch
    import torch.distributed as dist

    requested = marker_exists(marker)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        requested = bool(flag.item())
    return requested


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # a local absolute path, or s3://, gs://...


def marker_exists(uri: str) -> bool:
    import pyarrow.fs

    fs, path = _fs(uri)
    return bool(fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound)


def touch_marker(uri: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(b"")


def remove_marker(uri: str) -> None:
    if marker_exists(uri):
        fs, path = _fs(uri)
        fs.delete_file(path)


def trial_ray_settings(local: bool) -> dict[str, str]:
    """Ray Train settings for every trial's ``TorchTrainer``: they cut its start-up and
    tear-down and keep its fault tolerance (measured in results/bench/sweep_overhead.md).
    """
    env = {
        # The controller polls its workers this often (Ray's default: 2 s); a worker's report
        # waits for the next poll, and so does the end of a trial.
        ray_compat.HEALTH_CHECK_INTERVAL: "0.5",
        ray_compat.METRICS_ENABLED: "0",  # Prometheus metrics: no scraper is configured
    }
    if local:  # one machine is never drained: no preemption-watcher actor per trial
        env[ray_compat.PREEMPTION_WATCHER] = "0"
    return env
