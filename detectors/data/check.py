"""``check_dataset``: read a whole dataset and report every problem instead of stopping.

Loaders fix box-level defects themselves (clip or drop, counted in ``dataset.problems``) and
raise :class:`DataError` on file-level ones; the check builds the same loaders in their
non-strict mode, so it lists all of both, then decodes every image and looks for what a
loader does not fix but a researcher wants to know (near-duplicate boxes).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detectors.box_ops import box_iou
from detectors.data.base import DetectionDataset
from detectors.data.coco import CocoDataset
from detectors.data.errors import BAD_ROOT, DataError, Problem
from detectors.data.geometry import BoxSizes, GeometryReport
from detectors.data.layout import detect_layout
from detectors.data.voc import ALL_SPLITS, VOCDataset, resolve_voc_roots
from detectors.data.yolo import YOLODataset

DUPLICATE = "near-duplicate box (same class, IoU >= 0.9)"
DUPLICATE_IOU = 0.9


@dataclass
class DataReport:
    """Everything ``check_dataset`` found. ``problems`` holds each finding with its file;
    ``counts`` maps each kind (fixed defect, error, or note) to how often it occurred."""

    kind: str
    root: str
    split: str
    classes: list[str] = field(default_factory=list)
    num_images: int = 0  # usable images
    num_objects: int = 0  # boxes that become training targets
    num_ignored: int = 0  # boxes kept in the ground truth only (crowd, VOC difficult)
    num_empty_images: int = 0  # images without any training target
    objects_per_class: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    num_errors: int = 0  # file-level errors (a training run would stop on the first)
    counts: Counter[str] = field(default_factory=Counter)
    layout: str = ""  # the layout found (detectors.data.layout), e.g. coco-annotations
    box_sizes: BoxSizes | None = None  # the training boxes checked (for the geometry)
    geometry: GeometryReport | None = None  # box sizes against a detector, when asked

    @property
    def ok(self) -> bool:
        """True when a training run could use the dataset (no file-level errors)."""
        return self.num_errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layout": self.layout,
            "root": self.root,
            "split": self.split,
            "ok": self.ok,
            "classes": self.classes,
            "num_images": self.num_images,
            "num_objects": self.num_objects,
            "num_ignored": self.num_ignored,
            "num_empty_images": self.num_empty_images,
            "objects_per_class": self.objects_per_class,
            "num_errors": self.num_errors,
            "counts": dict(sorted(self.counts.items())),
            "problems": [
                {"path": p.path, "kind": p.kind, "detail": p.detail} for p in self.problems
            ],
            "geometry": self.geometry.to_dict() if self.geometry is not None else None,
        }

    def format(self, max_problems: int = 50) -> str:
        """A human-readable summary, at most ``max_problems`` individual findings."""
        per_class = ", ".join(f"{k} {v}" for k, v in self.objects_per_class.items())
        layout = f", {self.layout} layout" if self.layout and self.layout != self.kind else ""
        lines = [
            f"{self.kind} dataset {self.root} (split {self.split}{layout}): "
            + ("OK" if self.ok else f"{self.num_errors} error(s)"),
            f"  {self.num_images} images ({self.num_empty_images} without objects), "
            f"{self.num_objects} objects, {self.num_ignored} ignored (crowd/difficult)",
            f"  {len(self.classes)} classes: {per_class}",
        ]
        if self.counts:
            lines.append("  found:")
            lines += [f"    {n:6d}  {kind}" for kind, n in sorted(self.counts.items())]
        for problem in self.problems[:max_problems]:
            lines.append(f"  {problem}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        if self.geometry is not None:
            lines.append(self.geometry.format())
        return "\n".join(lines)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)
        self.counts[problem.kind] += 1


def detect_kind(root: str | Path) -> str:
    """``"voc"``, ``"coco"``, ``"yolo"`` or ``"synthetic"`` from the layout at ``root``."""
    return detect_layout(root).kind


def check_dataset(
    kind: str,
    root: str | Path | list[str | Path],
    *,
    split: str | None = None,
    classes: list[str] | None = None,
    include_difficult: bool = False,
    decode_images: bool = True,
) -> DataReport:
    """Check a dataset and return every problem found; raise only if ``root`` is unusable.

    ``kind``: ``"voc"``, ``"coco"``, ``"yolo"``, ``"synthetic"`` or ``"auto"`` (detected, see
    :mod:`detectors.data.layout`). ``split=None`` checks everything: every XML of a VOC
    root, every split of the other layouts. ``decode_images`` decodes every image (finds
    truncated files; slower) instead of only checking that it exists. The report's
    ``box_sizes`` are the training targets of what was checked.
    """
    layout = detect_layout(root, None if kind == "auto" else kind)
    kind = layout.kind
    datasets: list[DetectionDataset] = []
    errors: list[Problem] = []
    if kind == "voc":
        split = split or ALL_SPLITS
        datasets.append(
            VOCDataset(
                root, split, classes=classes, include_difficult=include_difficult, strict=False
            )
        )
        root_name = "+".join(str(r) for r in resolve_voc_roots(root))
    else:
        splits = [split] if split else list(layout.splits)
        if not splits:
            raise DataError(layout.root, f"no {kind} split found", kind=BAD_ROOT)
        for name in splits:
            files = layout.split(name)
            try:
                if kind == "yolo":
                    datasets.append(
                        YOLODataset(
                            files.images, names=layout.names, classes=classes, strict=False
                        )
                    )
                elif files.ann_file is not None and files.images:
                    datasets.append(
                        CocoDataset(files.ann_file, files.images[0], classes=classes, strict=False)
                    )
                else:
                    where = str(files.ann_file or layout.root)
                    errors.append(Problem(where, BAD_ROOT, f"split {name!r}: no images folder"))
            except DataError as error:  # a split that cannot be read at all: the others can
                errors.append(Problem(error.path, error.kind, f"split {name!r}: {error.message}"))
        split = ",".join(splits)
        root_name = layout.root
    if not datasets:
        raise DataError(errors[0].path, errors[0].detail, kind=errors[0].kind)
    report = DataReport(
        kind=kind, root=root_name, split=split, classes=datasets[0].classes, layout=layout.name
    )
    report.objects_per_class = dict.fromkeys(report.classes, 0)
    for problem in errors:
        report.add(problem)
        report.num_errors += 1
    for dataset in datasets:
        _check_one(dataset, report, decode_images)
    report.box_sizes = BoxSizes.from_records(
        [r for d in datasets for r in d.records], report.classes
    )
    return report


def _check_one(dataset: DetectionDataset, report: DataReport, decode_images: bool) -> None:
    for error in dataset.errors:
        report.add(Problem(error.path, error.kind, error.message))
        report.num_errors += 1
    for problem in dataset.problem_details:
        report.add(problem)
    for index, record in enumerate(dataset.records):
        if decode_images:
            try:
                dataset.load_image(index)  # decodes, and compares the size with the record
            except DataError as error:
                report.add(Problem(error.path, error.kind, error.message))
                report.num_errors += 1
        train = ~record.ignore
        report.num_images += 1
        report.num_objects += int(train.sum())
        report.num_ignored += int(record.ignore.sum())
        report.num_empty_images += int(not train.any())
        for label in record.labels[train]:
            report.objects_per_class[dataset.classes[int(label)]] += 1
        for i, j, iou in _near_duplicates(record.boxes, record.labels):
            first, second = (", ".join(f"{v:g}" for v in record.boxes[k]) for k in (i, j))
            name = dataset.classes[int(record.labels[j])]
            detail = (
                f"{name} [{second}] and [{first}], IoU {iou:.2f}; image {record.image_path.name}"
            )
            report.add(Problem(str(record.ann_path), DUPLICATE, detail))


def _near_duplicates(boxes: Any, labels: Any) -> list[tuple[int, int, float]]:
    """``(i, j, iou)`` for i < j, same-class boxes with IoU >= DUPLICATE_IOU."""
    if len(boxes) < 2:
        return []
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
    labels_t = torch.as_tensor(labels)
    iou = box_iou(boxes_t, boxes_t)  # [N, N]
    same = (labels_t[:, None] == labels_t[None, :]) & (iou >= DUPLICATE_IOU)
    pairs = torch.triu(same, diagonal=1).nonzero().tolist()
    return [(int(i), int(j), float(iou[i, j])) for i, j in pairs]


def report_json(report: DataReport) -> str:
    return json.dumps(report.to_dict(), indent=1)
