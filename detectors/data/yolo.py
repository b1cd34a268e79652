"""Ultralytics YOLO detection datasets: image folders (or image lists) and one label file
per image, found by the Ultralytics rule (the last ``images`` folder of the image's path
becomes ``labels``, the suffix ``.txt``).

Conventions (each one a decision):

- A label line is ``class cx cy w h``, normalised to the image's width and height. A line
  with more numbers is a polygon (``class x1 y1 x2 y2 ...``, a segmentation label): its
  bounding box is the object's box. Blank lines are skipped.
- An image without a label file, or with an empty one, is an image without objects.
- A label file without its image, a line that is not numbers, and a class index outside
  ``names`` are errors naming the file (and the line); boxes are sanitized like every
  loader's (clipped, or dropped and counted: zero-area, inverted, non-finite, outside).
- Classes: the YAML's ``names`` in index order, or a given ``classes`` list of names (boxes
  of the other classes are left out). Category id of label ``i`` is ``i + 1``.
- Images are ordered by path; image ids are 1, 2, ... in that order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detectors.data.base import (
    DetectionDataset,
    ImageRecord,
    Issues,
    Transform,
    coco_from_dict,
    empty_record_arrays,
    sanitize_box,
)
from detectors.data.errors import (
    BAD_SPLIT,
    MISSING_IMAGE,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
    DataError,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def label_path(image_path: Path) -> Path:
    """The Ultralytics label file of an image: ``.../images/a/b.jpg`` -> ``.../labels/a/b.txt``."""
    text = str(image_path)
    marker, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if marker in text:
        head, tail = text.rsplit(marker, 1)
        text = head + labels + tail
    return Path(text).with_suffix(".txt")


def list_images(source: Path) -> list[Path]:
    """The images of a folder (recursively) or of a ``.txt`` list (one path a line, relative
    to the list's folder), sorted. A source that does not exist is a :class:`DataError`."""
    if source.is_dir():
        return sorted(
            p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    if source.is_file() and source.suffix == ".txt":
        lines = [ln.strip() for ln in source.read_text(encoding="utf-8-sig").splitlines()]
        paths = [Path(ln) for ln in lines if ln]
        return sorted(p if p.is_absolute() else (source.parent / p) for p in paths)
    raise DataError(source, "image folder or image list not found", kind=BAD_SPLIT)


class YOLODataset(DetectionDataset):
    """YOLO detection dataset over image folders or lists (see the module docstring).

    ``strict=False`` (used by ``check_dataset``) records file-level errors in
    ``self.errors`` and skips the offending image instead of raising.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        *,
        names: Sequence[str],
        classes: list[str] | None = None,
        transforms: Transform | None = None,
        strict: bool = True,
    ) -> None:
        issues = Issues(strict=strict)
        names = list(names)
        if classes is None:
            classes = names
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(
                str(sources[0]) if sources else "<yolo>",
                f"unknown class {unknown[0]!r} (the dataset names: {', '.join(names)})",
                kind=UNKNOWN_CLASS,
            )
        if len(set(classes)) != len(classes):
            raise DataError(str(sources[0]), f"class list names a class twice: {classes}")
        label_of = {names.index(name): label for label, name in enumerate(classes)}

        images = sorted({p for source in sources for p in list_images(Path(source))})
        if strict and not images:
            raise DataError(str(sources[0]), "no images found", kind=BAD_SPLIT)
        records: list[ImageRecord] = []
        for image_path in images:
            record = _record(image_path, len(records) + 1, len(names), label_of, issues)
            if record is not None:
                records.append(record)
        _orphan_labels(sources, images, issues)
        super().__init__(
            records,
            classes=list(classes),
            category_ids=[i + 1 for i in range(len(classes))],
            coco=coco_from_dict(_ground_truth(records, classes)),
            issues=issues,
            transforms=transforms,
            name=", ".join(str(s) for s in sources),
        )
        self.sources = [Path(s) for s in sources]


def _record(
    image_path: Path, image_id: int, num_names: int, label_of: dict[int, int], issues: Issues
) -> ImageRecord | None:
    if not image_path.is_file():
        issues.error(image_path, "image file not found (listed in the split)", MISSING_IMAGE)
        return None
    try:
        with Image.open(image_path) as img:  # the header only
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as exc:
        issues.error(image_path, f"unreadable image ({exc})", UNREADABLE_IMAGE)
        return None
    labels_file = label_path(image_path)
    lines = _read_lines(labels_file, issues)
    if lines is None:
        return None
    boxes, labels = [], []
    for number, line in lines:
        parsed = _parse_line(labels_file, number, line, num_names, issues)
        if parsed is None:
            return None  # the file is unusable; already reported
        cls, (x1, y1, x2, y2) = parsed
        box = (x1 * width, y1 * height, x2 * width, y2 * height)
        kept, problem = sanitize_box(box, width, height)
        if problem is not None:
            values = line.split()[1:5]
            issues.fixed(labels_file, problem, f"line {number}: class {cls} [{', '.join(values)}]")
        if kept is None or cls not in label_of:
            continue
        boxes.append(kept)
        labels.append(label_of[cls])
    empty_boxes, empty_labels, empty_ignore = empty_record_arrays()
    return ImageRecord(
        image_id=image_id,
        image_path=image_path,
        ann_path=labels_file,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4) if boxes else empty_boxes,
        labels=np.asarray(labels, np.int64) if labels else empty_labels,
        ignore=np.zeros(len(boxes), bool) if boxes else empty_ignore,
    )


def _read_lines(path: Path, issues: Issues) -> list[tuple[int, str]] | None:
    if not path.is_file():
        return []  # no label file: an image without objects
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        issues.error(path, f"unreadable label file ({exc})")
        return None
    return [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def _parse_line(
    path: Path, number: int, line: str, num_names: int, issues: Issues
) -> tuple[int, tuple[float, float, float, float]] | None:
    """``(class, normalised xyxy)`` of one label line, or None after ``issues.error``."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        issues.error(path, f"line {number}: expected 'class cx cy w h' numbers, got {line!r}")
        return None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
        issues.error(path, f"line {number}: expected 'class cx cy w h', got {line.strip()!r}")
        return None
    cls = values[0]
    if not (cls.is_integer() and 0 <= cls < num_names):
        issues.error(
            path,
            f"line {number}: unknown class {fields[0]} "
            f"(names has {num_names}: 0..{num_names - 1})",
            UNKNOWN_CLASS,
        )
        return None
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        return int(cls), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    xs, ys = values[1::2], values[2::2]  # a polygon: its bounding box
    if not all(math.isfinite(v) for v in xs + ys):
        return int(cls), (math.nan, math.nan, math.nan, math.nan)
    return int(cls), (min(xs), min(ys), max(xs), max(ys))


def _orphan_labels(sources: Sequence[str | Path], images: list[Path], issues: Issues) -> None:
    """A label file whose image is missing is a missing image (reported per label file)."""
    expected = {label_path(p) for p in images}
    for source in sources:
        source = Path(source)
        if not source.is_dir():
            continue
        labels_dir = label_path(source / "x.jpg").parent
        if labels_dir == source or not labels_dir.is_dir():
            continue
        for labels_file in sorted(labels_dir.rglob("*.txt")):
            if labels_file not in expected:
                issues.error(
                    labels_file, f"label file without an image in {source}", MISSING_IMAGE
                )


def _ground_truth(records: Sequence[ImageRecord], classes: Sequence[str]) -> dict[str, Any]:
    """COCO dict of the kept boxes (original pixels)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in records:
        images.append(
            {
                "id": record.image_id,
                "file_name": str(record.image_path),
                "width": record.width,
                "height": record.height,
            }
        )
        for box, label in zip(record.boxes, record.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "YOLO"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
    }
