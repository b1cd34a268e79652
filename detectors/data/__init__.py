"""Detection datasets, transforms and loaders (plain PyTorch; no Ray, no MLflow).

``build_dataset(kind, root=..., split=..., image_size=..., train=...)`` returns a dataset of
``(image, target)`` items (contract in ``detectors.data.base``) for ``kind`` in
``DATASET_KINDS``; ``detect_layout`` tells a folder's kind, layout and splits;
``make_loader`` batches it with ``collate``; ``check_dataset`` reports everything wrong
with a dataset; ``ensure_synthetic`` makes the synthetic shapes set.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
)

from detectors.data.base import DetectionDataset, Target, Transform
from detectors.data.check import DataReport, check_dataset, detect_kind
from detectors.data.coco import CachedCocoDataset, CocoDataset, coco_split, resolve_coco_paths
from detectors.data.errors import DataError, Problem
from detectors.data.layout import Layout, SplitFiles, coco_images_near, detect_layout
from detectors.data.pixels import cache_folder_images, has_pixel_cache
from detectors.data.synthetic import SHAPE_CLASSES, SyntheticSpec, ensure_synthetic
from detectors.data.transforms import build_transforms, collate, reseed_transforms
from detectors.data.voc import VOCDataset
from detectors.data.yolo import YOLODataset

__all__ = [
    "DATASET_KINDS",
    "SHAPE_CLASSES",
    "CocoDataset",
    "DataError",
    "DataReport",
    "DetectionDataset",
    "Layout",
    "Problem",
    "SplitFiles",
    "SyntheticSpec",
    "Target",
    "VOCDataset",
    "YOLODataset",
    "build_dataset",
    "build_transforms",
    "check_dataset",
    "collate",
    "detect_kind",
    "detect_layout",
    "ensure_synthetic",
    "make_loader",
    "set_epoch",
]

DATASET_KINDS = ("synthetic", "coco", "voc", "yolo")


def build_dataset(
    kind: str,
    *,
    root: str | Path | Sequence[str | Path],
    split: str,
    image_size: int | None,
    train: bool,
    classes: list[str] | None = None,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    flip_prob: float = 0.5,
    jitter: float = 0.0,
    transforms: Transform | None = None,
    include_difficult: bool = False,
    synthetic: SyntheticSpec | Mapping[str, Any] | None = None,
    ann_file: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> DetectionDataset:
    """A dataset of ``kind`` (``"synthetic"``, ``"coco"``, ``"voc"`` or ``"yolo"``).

    Transforms: resize so the longer side is ``image_size`` (or ``min_size``/``max_size``
    style), then, if ``train``, a horizontal flip with ``flip_prob`` and photometric
    ``jitter`` (0 = off); ``transforms`` replaces all of that.

    - ``synthetic``: ``root`` is a generated folder (has ``<split>.json``) or a cache folder
      in which ``ensure_synthetic`` makes (once) the set described by ``synthetic``
      (a :class:`SyntheticSpec` or its fields; defaults otherwise). Splits: train, val.
    - ``coco``, ``yolo``: ``root`` (a folder, a COCO JSON or a YOLO YAML) + ``split``, in any
      layout of :mod:`detectors.data.layout`; or explicit ``ann_file`` (coco) and
      ``images_dir`` (relative to ``root``; yolo: an image folder or list, its class names
      from the YAML at ``root``).
    - ``voc``: ``root`` is one or several VOC folders (list or ``a+b``); ``split`` names
      ``ImageSets/Main/<split>.txt``, is the path of such a list, or is ``"all"``;
      ``include_difficult`` trains on difficult objects too.
    """
    if transforms is None:
        transforms = build_transforms(
            train=train,
            image_size=image_size,
            min_size=min_size,
            max_size=max_size,
            flip_prob=flip_prob,
            jitter=jitter,
        )
    if kind == "voc":
        return VOCDataset(
            root,
            split,
            classes=classes,
            include_difficult=include_difficult,
            transforms=transforms,
        )
    if not isinstance(root, str | Path):
        raise DataError(str(root), f"a {kind} dataset takes one root folder")
    root = Path(root).expanduser()
    if kind == "coco":
        ann_path, images = coco_split_files(root, split, ann_file, images_dir)
        return CocoDataset(ann_path, images, classes=classes, transforms=transforms)
    if kind == "yolo":
        sources, names = yolo_split_files(root, split, images_dir)
        return YOLODataset(sources, names=names, classes=classes, transforms=transforms)
    if kind == "synthetic":
        if split not in ("train", "val"):
            raise ValueError(f"synthetic splits are 'train' and 'val', not {split!r}")
        if not (root / f"{split}.json").is_file():
            spec = (
                synthetic
                if isinstance(synthetic, SyntheticSpec)
                else SyntheticSpec(**(synthetic or {}))
            )
            root = ensure_synthetic(root, **asdict(spec))
        images = root / split / "images"
        if not has_pixel_cache(images):  # a set generated before the cache existed
            with open(root / f"{split}.json", encoding="utf-8") as f:
                listed = json.load(f)["images"]
            cache_folder_images(images, [(im["id"], images / im["file_name"]) for im in listed])
        return CachedCocoDataset(
            root / f"{split}.json", images, classes=classes, transforms=transforms
        )
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")


def _under(root: Path, path: str | Path) -> Path:
    """``path`` relative to the dataset ``root`` (its folder when it is a file)."""
    path = Path(path).expanduser()
    if path.is_absolute() or not str(root) or str(root) == ".":
        return path
    return (root.parent if root.is_file() else root) / path


def coco_split_files(
    root: Path, split: str, ann_file: str | Path | None, images_dir: str | Path | None
) -> tuple[Path, Path]:
    """``(annotation JSON, images folder)`` of a COCO split: explicit files where given
    (relative to ``root``), else found in ``root``'s layout."""
    if ann_file:
        ann_path = _under(root, ann_file)
        return ann_path, _under(root, images_dir) if images_dir else coco_images_near(ann_path)
    if images_dir:
        found = coco_split(root, split).ann_file
        if found is not None:
            return found, _under(root, images_dir)
    return resolve_coco_paths(root, split)


def yolo_split_files(
    root: Path, split: str, images_dir: str | Path | None
) -> tuple[list[Path], list[str]]:
    """``(image folders or lists, class names)`` of a YOLO split: an explicit ``images_dir``
    (relative to ``root``), else the split's entries in the dataset YAML at ``root``."""
    if not str(root) or str(root) == ".":
        raise DataError("data.root", "a yolo dataset needs data.root: its YAML or folder")
    layout = detect_layout(root, "yolo")
    if images_dir:
        return [_under(root, images_dir)], list(layout.names)
    return list(layout.split(split).images), list(layout.names)


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a loader worker from its torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> DataLoader[Any]:
    """A DataLoader of ``(images [B, 3, H, W], targets)`` batches (see ``collate``).

    Deterministic: the order comes from ``seed`` (a different one each epoch), and so do
    the random transforms (through the loader's generator in workers, ``reseed`` in the
    main process). With ``distributed`` the rank and world size come from
    ``torch.distributed`` and a ``DistributedSampler`` (seeded with ``seed``, the same on
    every rank) splits the data; call :func:`set_epoch` at the start of every epoch.
    Augmentation streams differ per rank (seeded ``seed + rank``).
    """
    rank = 0
    sampler: Sampler[int]
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised torch.distributed group")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    elif shuffle:
        # A one-replica DistributedSampler: its order is a function of (seed, epoch), so a
        # run resumed at epoch e sees epoch e's order, not epoch 0's again.
        sampler = DistributedSampler(
            dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=drop_last
        )
    else:
        sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
    if num_workers == 0:
        reseed_transforms(getattr(dataset, "transforms", None), seed + rank)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed + rank),
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    loader.corrtune_seed = seed + rank  # read by set_epoch
    return loader


def set_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """Make epoch ``epoch``'s order and augmentations a function of (seed, rank, epoch).

    Call it before each epoch: a run resumed at any epoch then reproduces exactly the batches
    an uninterrupted run would have seen (sampler order, flips in the main process and the
    loader workers' seeds).
    """
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    base = getattr(loader, "corrtune_seed", None)
    if base is None:
        return
    epoch_seed = (base * 1_000_003 + epoch) % 2**63
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed)
    if loader.num_workers == 0:
        reseed_transforms(getattr(loader.dataset, "transforms", None), epoch_seed)
