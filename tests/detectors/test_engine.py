"""The training engine: determinism, checkpoint resume, non-finite losses, DDP equivalence."""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
from detectors.jsonio import finite_or_none
from detectors.models import DETECTORS

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
    with pytest.raises(NonFiniteLossError, match="iteration 3") as raised:
        run_training(cfg, out_dir=tmp_path, cache_dir=cache)
    assert "last good checkpoint" in str(raised.value) and "(iteration 2)" in str(raised.value)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_loss_without_a_checkpoint_says_so(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer.run_step

    def poisoned(self: Trainer, batch: Any) -> Any:
        images, targets = batch
        return original(self, (images * float("nan"), targets))

    monkeypatch.setattr(Trainer, "run_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it"):
        run_training(smoke(**{"train.iterations": 4}), out_dir=tmp_path, cache_dir=cache)
    assert not (tmp_path / "checkpoint.pt").exists()


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


def _ddp_worker(
    rank: int,
    world_size: int,
    port: int,
    cache: str,
    out: str,
    overrides: dict[str, Any] | None = None,
) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        engine.build_datasets = _without_flips  # type: ignore[assignment]
        if overrides and overrides.get("train.use_gpu"):
            _exact_cuda_float32()
        cfg = smoke(**(DDP if overrides is None else overrides))
        losses = losses_of(cfg, Path(out) / f"rank{rank}", Path(cache))
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


def _drive(hooks: list[engine.Hook], iterations: int, step_s: float = 0.0) -> Any:
    """Run ``hooks`` over ``iterations`` fake steps of ``step_s`` seconds (no model)."""
    from types import SimpleNamespace

    cfg = smoke(**{"train.iterations": iterations}).train
    trainer = SimpleNamespace(
        iteration=0,
        cfg=cfg,
        device=torch.device("cpu"),
        optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]),
        last_step=False,
    )
    for hook in hooks:
        hook.before_train(trainer)  # type: ignore[arg-type]
    for it in range(1, iterations + 1):
        trainer.iteration, trainer.last_step = it, it >= iterations
        out = engine.StepOutput({"loss": float(it)}, {}, seconds=step_s)
        record = engine.StepRecord()
        for hook in hooks:
            hook.after_step(trainer, out, record)  # type: ignore[arg-type]
    return trainer


def test_evaluation_time_is_not_training_time() -> None:
    """An evaluation that takes 0.3 s must not show up in the next window's seconds/step."""
    import time

    records: list[dict[str, Any]] = []

    def slow_eval(trainer: Any) -> dict[str, float]:
        time.sleep(0.3)
        return {"AP": 0.0}

    reporting = engine.Reporting(lambda r, c: records.append(r))
    hooks = [
        engine.TrainMetrics(log_every=2, batch_size=4),
        engine.Evaluation(evaluate_fn=slow_eval, eval_every=2),
        engine.Clock(),
        reporting,
    ]
    _drive(hooks, 4, step_s=0.01)
    assert [r["iteration"] for r in records] == [2, 4]
    assert records[1]["train/sec_per_iter"] == pytest.approx(0.01)  # the steps' own time
    assert records[1]["train/loss"] == pytest.approx(3.5)  # mean of the window's 3 and 4
    assert records[1]["train/eval_time_s"] >= 0.6  # both evaluations counted
    assert records[1]["train/elapsed_s"] >= 0.6  # training time includes evaluations
    assert reporting.final["eval_time_s"] >= 0.6 and reporting.final["AP"] == 0.0


def test_hook_times_survive_a_resume() -> None:
    """Elapsed and evaluation seconds go on from a checkpoint's counters, not from 0."""
    evaluation, clock = engine.Evaluation(evaluate_fn=lambda t: {}, eval_every=0), engine.Clock()
    evaluation.load_state_dict({"eval_s": 12.5})
    clock.load_state_dict({"elapsed_s": 100.0})
    records: list[dict[str, Any]] = []
    _drive([evaluation, clock, engine.Reporting(lambda r, c: records.append(r))], 1)
    assert records[-1]["train/eval_time_s"] >= 12.5
    assert 100.0 <= records[-1]["train/elapsed_s"] < 110.0
    assert clock.state_dict()["elapsed_s"] >= 100.0


def test_after_train_runs_when_training_fails(tmp_path: Path, cache: Path) -> None:
    calls: list[str] = []

    class Probe(engine.Hook):
        def after_step(self, trainer: Any, out: Any, record: Any) -> None:
            raise RuntimeError("boom")

        def after_train(self, trainer: Any) -> None:
            calls.append("after_train")

    cfg = smoke(**{"train.iterations": 2})
    model = engine.build_detector(cfg, num_classes=5)
    train_set, _ = engine.build_datasets(cfg, cache)
    loader = engine.make_loader(train_set, 2, shuffle=True, seed=0)
    trainer = Trainer(
        model=model,
        optimizer=engine.build_optimizer(model, cfg.train),
        loader=loader,
        cfg=cfg.train,
        device=torch.device("cpu"),
        hooks=[Probe()],
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert calls == ["after_train"]


def test_a_finished_run_resumed_reports_its_last_record_again(tmp_path: Path, cache: Path) -> None:
    """A run resumed from its final checkpoint trains nothing and repeats its final report
    (the one an interrupted orchestrator may never have received)."""
    cfg = smoke(**{"train.iterations": 2})
    first: list[tuple[dict[str, Any], Any]] = []
    run_training(
        cfg, out_dir=tmp_path / "a", cache_dir=cache, report=lambda r, c: first.append((r, c))
    )
    again: list[tuple[dict[str, Any], Any]] = []
    final = run_training(
        cfg,
        out_dir=tmp_path / "b",
        cache_dir=cache,
        report=lambda r, c: again.append((r, c)),
        resume_from=tmp_path / "a" / "checkpoint.pt",
    )
    assert len(again) == 1  # no training step, one report
    record, checkpoint = again[0]
    # The very metrics of the last report, val/AP included (NaN as None: NaN != NaN).
    assert finite_or_none(record) == finite_or_none(first[-1][0])
    assert "val/AP" in record and checkpoint == tmp_path / "a" / "checkpoint.pt"
    assert final["AP"] == record["val/AP"]


def test_metrics_json_is_strict_json(tmp_path: Path, cache: Path) -> None:
    import json

    run_training(smoke(**{"train.iterations": 1}), out_dir=tmp_path, cache_dir=cache)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = smoke(
        **{
            "train.schedule": "cosine",
            "train.iterations": 110,
            "train.warmup_iters": 10,
            "train.lr_steps": [0.75, 0.9],  # the default: the cosine schedule reads none
        }
    ).train
    assert engine.lr_factor(0, cfg) == pytest.approx(cfg.warmup_factor)
    assert engine.lr_factor(10, cfg) == pytest.approx(1.0)  # the peak, after the warm-up
    assert engine.lr_factor(60, cfg) == pytest.approx(0.5)  # half-way down the half cosine
    assert engine.lr_factor(110, cfg) == pytest.approx(0.0, abs=1e-12)
    values = [engine.lr_factor(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # never rises after the peak


def test_weight_average_follows_the_ramped_decay() -> None:
    from types import SimpleNamespace

    live = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(live.weight)
    average = engine.WeightAverage(live, decay=0.9)
    trainer = SimpleNamespace(detector=live)
    expected = torch.zeros_like(live.weight)
    for t in range(1, 40):
        with torch.no_grad():
            live.weight.fill_(float(t))
        average.after_step(trainer, engine.StepOutput({}, {}), engine.StepRecord())  # type: ignore[arg-type]
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * t
    assert torch.allclose(average.model.weight, expected)
    assert not average.model.weight.requires_grad
    restored = engine.WeightAverage(live, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 39 and torch.equal(restored.model.weight, average.model.weight)


def test_a_run_with_a_weight_average_evaluates_and_keeps_it(tmp_path: Path, cache: Path) -> None:
    cfg = smoke(**{"train.iterations": 3, "train.ema_decay": 0.5})
    run_training(cfg, out_dir=tmp_path, cache_dir=cache)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["eval_model"] is not None
    differs = [k for k, v in state["model"].items() if not torch.equal(v, state["eval_model"][k])]
    assert differs  # the average is not the last weights


@pytest.mark.parametrize(
    ("amp", "device", "native", "expected"),
    [
        ("off", "cpu", True, False),
        ("bf16", "cpu", True, True),
        ("bf16", "cpu", False, False),  # no native bf16: fp32, with a warning
        ("fp16", "cpu", True, False),  # fp16 autocast is for CUDA
        ("bf16", "cuda", False, True),
    ],
)
def test_autocast_is_on_only_where_it_computes_natively(
    amp: str, device: str, native: bool, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert engine.autocast_enabled(amp, torch.device(device)) is expected
    warned = any("trains in fp32" in str(w.message) for w in caught)
    assert warned == (amp != "off" and not expected)


# ----------------------------------------------------------------------------------- CUDA
AMP_MODES = ("off", "bf16", "fp16")


def _exact_cuda_float32() -> None:
    """No TF32 in convolutions and matrix products: float32 results that two runs which
    split a batch differently can be compared on to a few ulps."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.cuda
@pytest.mark.parametrize("amp", AMP_MODES)
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_trains_on_cuda_under_each_amp(name: str, amp: str, cache: Path) -> None:
    """Three steps of ``Trainer.run_step`` (a ResNet with BatchNorm, channels-last): finite
    losses, autocast and the GradScaler as ``train.amp`` says, and every step either
    updates the weights or (fp16) lowers the loss scale after an overflow."""
    from detectors.data import make_loader
    from detectors.models import build_detector

    cfg = smoke(**{"model.name": name, "model.backbone": "resnet18", "train.amp": amp})
    device = torch.device("cuda")
    train_set, _ = engine.build_datasets(cfg, cache)
    loader = make_loader(train_set, 4, shuffle=True, seed=0, drop_last=True)
    torch.manual_seed(0)
    model = engine.place_model(build_detector(cfg, len(train_set.classes)), device)
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    trainer = Trainer(
        model=model,
        optimizer=engine.build_optimizer(model, cfg.train),
        loader=loader,
        cfg=cfg.train,
        device=device,
    )
    assert trainer.autocast is (amp != "off")
    assert trainer.scaler.is_enabled() is (amp == "fp16")
    batches = engine.infinite(loader)
    for _ in range(3):
        before = conv.detach().clone()
        scale = trainer.scaler.get_scale()
        out = trainer.run_step(next(batches))  # raises NonFiniteLossError on NaN / inf
        assert math.isfinite(out.losses["loss"]) and out.losses["loss"] > 0
        updated = not torch.equal(before, conv.detach())
        assert updated or trainer.scaler.get_scale() < scale, (
            "a step neither updated nor backed off"
        )
    assert all(p.dtype == torch.float32 and bool(p.isfinite().all()) for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("amp", AMP_MODES)
def test_run_training_on_cuda(amp: str, tmp_path: Path, cache: Path) -> None:
    """The whole run on the device: training, evaluation (NMS and metrics of CUDA outputs),
    the peak memory in every report, a checkpoint holding the GradScaler's state."""
    records: list[dict[str, Any]] = []
    cfg = smoke(**{"train.iterations": 3, "train.use_gpu": True, "train.amp": amp})
    final = run_training(
        cfg, out_dir=tmp_path, cache_dir=cache, report=lambda r, _: records.append(r)
    )
    assert math.isfinite(final["AP"])
    assert all(r["train/peak_mem_mb"] > 0 for r in records)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    if amp == "fp16":  # an enabled scaler saves its scale; a disabled one saves nothing
        assert state["scaler"]["scale"] > 0
    else:
        assert not state["scaler"]


@pytest.mark.cuda
def test_sync_bn_two_workers_match_one_on_cuda(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SyncBatchNorm normalises with the global batch's statistics: two workers of 2 images
    each (sharing the GPU over gloo) train as one worker on the 4 images with BatchNorm."""
    trained_bn = {**DDP, "model.frozen_bn": False, "train.use_gpu": True}
    monkeypatch.setattr(engine, "build_datasets", _without_flips)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    single = losses_of(smoke(**trained_bn), tmp_path / "single", cache)
    port = 30500 + os.getpid() % 1000
    mp.spawn(
        functools.partial(
            _ddp_worker,
            world_size=2,
            port=port,
            cache=str(cache),
            out=str(tmp_path),
            overrides={**trained_bn, "train.sync_bn": True},
        ),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"losses{r}.pt") for r in range(2)]
    for it in (1, 2):
        mean = (ranks[0][it] + ranks[1][it]) / 2
        assert mean == pytest.approx(single[it], rel=1e-4), it
    assert ranks[0][1] != ranks[1][1]
