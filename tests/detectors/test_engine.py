"""The training engine: determinism, checkpoint resume, non-finite losses, DDP equivalence."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectors import engine
from detectors.config import ExperimentConfig, load_config
from detectors.data import build_dataset
from detectors.engine import NonFiniteLossError, Trainer, load_checkpoint, run_training

# Schedules independent of the run length (no warm-up, no steps), one loss per record.
STEADY = {"train.warmup_iters": 0, "train.lr_steps": [], "train.log_every": 1}


def smoke(**overrides: Any) -> ExperimentConfig:
    return load_config("smoke", overrides={**STEADY, **overrides})


def losses_of(cfg: ExperimentConfig, out: Path, cache: Path, **kwargs: Any) -> dict[int, float]:
    """``{iteration: training loss}`` of one run."""
    records: dict[int, float] = {}

    def report(record: dict[str, Any], checkpoint: Any) -> None:
        records[record["iteration"]] = record["train/loss"]

    run_training(cfg, out_dir=out, cache_dir=cache, report=report, **kwargs)
    return records


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_seeded_runs_are_deterministic(tmp_path: Path, cache: Path) -> None:
    cfg = smoke(**{"train.iterations": 3})
    first = losses_of(cfg, tmp_path / "a", cache)
    second = losses_of(cfg, tmp_path / "b", cache)
    other_seed = losses_of(
        smoke(**{"train.iterations": 3, "train.seed": 1}), tmp_path / "c", cache
    )
    assert list(first) == [1, 2, 3]
    assert first == second
    assert first[1] != other_seed[1]


@pytest.mark.parametrize("stop_at", [4, 2], ids=["epoch-boundary", "mid-epoch"])
def test_resume_gives_the_same_next_loss(stop_at: int, tmp_path: Path, cache: Path) -> None:
    straight = losses_of(smoke(**{"train.iterations": stop_at + 1}), tmp_path / "s", cache)
    losses_of(smoke(**{"train.iterations": stop_at}), tmp_path / "a", cache)
    checkpoint = tmp_path / "a" / "checkpoint.pt"
    resumed = losses_of(
        smoke(**{"train.iterations": stop_at + 1}),
        tmp_path / "b",
        cache,
        resume_from=checkpoint,
    )
    assert list(resumed) == [stop_at + 1]  # continued, did not restart
    assert resumed[stop_at + 1] == pytest.approx(straight[stop_at + 1], rel=1e-5)


def test_resume_restores_weights_and_iteration(tmp_path: Path, cache: Path) -> None:
    cfg = smoke(**{"train.iterations": 2})
    run_training(cfg, out_dir=tmp_path, cache_dir=cache)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    model = engine.build_detector(cfg, num_classes=5)
    optimizer = engine.build_optimizer(model, cfg.train)
    trainer = Trainer(
        model=model, optimizer=optimizer, loader=None, cfg=cfg.train, device=torch.device("cpu")
    )  # type: ignore[arg-type]
    load_checkpoint(tmp_path / "checkpoint.pt", trainer)
    assert trainer.iteration == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_non_finite_loss_raises_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer.run_step

    def poisoned(self: Trainer, batch: Any) -> Any:
        images, targets = batch
        if self.iteration == 3:  # NaN pixels -> NaN features -> NaN loss
            images = images * float("nan")
        return original(self, (images, targets))

    monkeypatch.setattr(Trainer, "run_step", poisoned)
    cfg = smoke(**{"train.iterations": 4, "train.checkpoint_every": 2})
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        run_training(cfg, out_dir=tmp_path, cache_dir=cache)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ DDP
# Frozen BatchNorm: per-worker batch statistics would make 2 x 2 images differ from 1 x 4.
DDP = {
    "model.backbone": "resnet18",
    "model.frozen_bn": True,
    "train.iterations": 2,
    "train.optimizer": "sgd",
    "train.lr": 0.01,
}


def _without_flips(cfg: ExperimentConfig, cache_dir: Path) -> tuple[Any, Any]:
    """Datasets without random flips: their streams are seeded per rank by design."""
    d = cfg.data
    common: dict[str, Any] = {
        "root": engine.data_root(cfg, cache_dir),
        "image_size": d.image_size,
        "synthetic": dataclasses.asdict(d.synthetic),
    }
    train = build_dataset(d.kind, split=d.train_split, train=True, flip_prob=0.0, **common)
    val = build_dataset(d.kind, split=d.val_split, train=False, **common)
    return train, val


def _ddp_worker(rank: int, world_size: int, port: int, cache: str, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        engine.build_datasets = _without_flips  # type: ignore[assignment]
        losses = losses_of(smoke(**DDP), Path(out) / f"rank{rank}", Path(cache))
        torch.save(losses, Path(out) / f"losses{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_workers_match_one_on_the_same_global_batch(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "build_datasets", _without_flips)
    single = losses_of(smoke(**DDP), tmp_path / "single", cache)
    port = 29500 + os.getpid() % 1000
    mp.spawn(
        functools.partial(
            _ddp_worker, world_size=2, port=port, cache=str(cache), out=str(tmp_path)
        ),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"losses{r}.pt") for r in range(2)]
    for it in (1, 2):  # 2: after one all-reduced step, so the gradients matched too
        # Each worker divides its loss by the global positive count: their mean is the
        # single-process loss over the same 4 images.
        mean = (ranks[0][it] + ranks[1][it]) / 2
        assert math.isfinite(mean)
        assert mean == pytest.approx(single[it], rel=1e-4), it
    assert ranks[0][1] != ranks[1][1]  # the workers really saw different images


# ------------------------------------------------------------- optimizer and normalization
@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [("none", 64, 0.01), ("linear", 64, 0.04), ("linear", 8, 0.005), ("sqrt", 64, 0.02)],
)
def test_learning_rate_follows_the_batch_size_rule(rule: str, batch: int, expected: float) -> None:
    cfg = load_config(
        "smoke",
        overrides={
            "train.lr": 0.01,
            "train.lr_scaling": rule,
            "train.lr_reference_batch": 16,
            "train.batch_size": batch,
        },
    ).train
    optimizer = engine.build_optimizer(torch.nn.Linear(2, 2), cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2)
    assert engine.lr_factor(cfg.iterations, cfg) * cfg.scaled_lr < expected  # steps still apply


def test_sync_batchnorm_replaces_batchnorm_only() -> None:
    """What ``train.sync_bn`` does to a model (its forward needs GPUs: torch's SyncBatchNorm
    refuses CPU tensors, so the config refuses sync_bn without train.use_gpu)."""
    from detectors.models import build_detector

    model = build_detector(load_config("smoke", overrides={"model.backbone": "resnet18"}), 3)
    before = {type(m).__name__ for m in model.modules()}
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    after = {type(m).__name__ for m in converted.modules()}
    assert "BatchNorm2d" in before and "BatchNorm2d" not in after
    assert "SyncBatchNorm" in after and "GroupNorm" in after  # heads keep GroupNorm


def test_evaluation_time_is_not_training_time() -> None:
    """An evaluation that takes 0.3 s must not show up in the next window's seconds/step."""
    import time
    from types import SimpleNamespace

    cfg = smoke(**{"train.iterations": 4, "train.log_every": 2, "train.eval_every": 2})
    records: list[dict[str, Any]] = []

    def slow_eval(trainer: Any) -> dict[str, float]:
        time.sleep(0.3)
        return {"AP": 0.0}

    hook = engine.PeriodicHook(
        cfg=cfg, evaluate_fn=slow_eval, checkpoint_dir=None, report=lambda r, c: records.append(r)
    )
    trainer = SimpleNamespace(
        iteration=0,
        device=torch.device("cpu"),
        optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]),
    )
    hook.before_train(trainer)  # type: ignore[arg-type]
    out = engine.StepOutput({"loss": 1.0}, {})
    for it in range(1, 5):
        trainer.iteration = it
        hook.after_step(trainer, out)  # type: ignore[arg-type]
    assert [r["iteration"] for r in records] == [2, 4]
    assert records[1]["train/sec_per_iter"] < 0.1  # steps here take microseconds
    assert records[1]["train/eval_time_s"] >= 0.6  # both evaluations counted
    assert hook.final["eval_time_s"] >= 0.6 and hook.final["AP"] == 0.0
