"""The training and validation datasets an :class:`~detectors.config.ExperimentConfig`
names: ``data.kind``, ``data.root``, the split (``data.train_split`` / ``data.val_split``)
and its explicit files (``data.train.*`` / ``data.val.*``, which win when set)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from detectors.config import ExperimentConfig
from detectors.data import DataError, DetectionDataset, build_dataset

Which = Literal["train", "val"]


def data_root(cfg: ExperimentConfig, cache_dir: Path) -> str:
    """``data.root``; for the synthetic set without one, the cache folder's ``data/``."""
    return cfg.data.root or str(cache_dir / "data")


def split_name(cfg: ExperimentConfig, which: Which) -> str:
    return cfg.data.train_split if which == "train" else cfg.data.val_split


def build_split(
    cfg: ExperimentConfig,
    which: Which,
    cache_dir: Path,
    *,
    train: bool,
    image_size: int | Literal["config"] | None = "config",
    classes: list[str] | None = None,
) -> DetectionDataset:
    """The ``which`` split of ``cfg``'s dataset; ``train`` turns on the training transforms.
    ``image_size`` (default: ``data.image_size``; None: no resize) and ``classes`` (default:
    ``data.classes``, else the dataset's own) replace the config's for this call."""
    d = cfg.data
    files = d.train if which == "train" else d.val
    if d.kind != "synthetic" and not d.root and not files.ann_file:
        raise DataError(
            "data.root", f"no {d.kind} dataset given (--data PATH, or --set data.root=PATH)"
        )
    extra: dict[str, Any] = {}
    if d.kind == "synthetic":
        extra["synthetic"] = asdict(d.synthetic)
    return build_dataset(
        d.kind,
        root=data_root(cfg, cache_dir),
        split=split_name(cfg, which),
        image_size=d.image_size if image_size == "config" else image_size,
        train=train,
        classes=classes if classes is not None else (list(d.classes) or None),
        ann_file=files.ann_file or None,
        images_dir=files.images or None,
        **extra,
    )
