"""Any COCO-format detection dataset: an images folder and an annotation JSON.

- Category ids are mapped to contiguous labels in increasing id order (or in the order of a
  given ``classes`` list of names; annotations of other categories are left out, and so are
  they from ``dataset.coco``).
- Crowd annotations (``iscrowd: 1``) stay in the ground truth (COCOeval ignores matches to
  them) but never become training targets.
- Images without annotations are kept (negatives).
- Boxes are sanitized for training (clipped or dropped with a counted problem); the ground
  truth ``dataset.coco`` keeps the file's own boxes so evaluation matches the official one,
  except those dropped (degenerate, or wholly outside the image): no detection could match
  them, and the VOC and YOLO loaders leave them out of their ground truth too.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
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
    BAD_ROOT,
    MISSING_ANNOTATION,
    MISSING_IMAGE,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
    DataError,
)
from detectors.data.layout import SplitFiles, detect_layout
from detectors.data.pixels import open_pixel_cache
from detectors.data.synthetic import MANIFEST


def resolve_coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation json, images folder)`` of ``split`` under ``root``, in any COCO layout
    of :mod:`detectors.data.layout` (``root`` may be the JSON itself; ``split`` is then
    ignored). A split may also be given as the path of its JSON."""
    files = coco_split(root, split)
    if files.ann_file is None or not files.images:
        raise DataError(
            files.ann_file or root,
            f"no images folder found for COCO split {files.name!r} (name it with "
            "data.train.images or data.val.images)",
            kind=BAD_ROOT,
        )
    return files.ann_file, files.images[0]


def coco_split(root: str | Path, split: str) -> SplitFiles:
    """The files of COCO ``split`` under ``root`` (images folder possibly not found)."""
    root = Path(root).expanduser()
    layout = detect_layout(root, "synthetic" if (root / MANIFEST).is_file() else "coco")
    return next(iter(layout.splits.values())) if root.is_file() else layout.split(split)


def read_json(path: Path) -> Any:
    """Parse ``path``; a missing or malformed file is a :class:`DataError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, "annotation file not found", kind=MISSING_ANNOTATION) from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable annotation file ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class CocoDataset(DetectionDataset):
    """Detection dataset over a COCO annotation JSON. See the module docstring for rules.

    ``strict=False`` (used by ``check_dataset``) records file-level errors in
    ``self.errors`` and skips the offending image or annotation instead of raising.
    """

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path,
        *,
        classes: list[str] | None = None,
        transforms: Transform | None = None,
        strict: bool = True,
    ) -> None:
        ann_file, images_dir = Path(ann_file), Path(images_dir)
        issues = Issues(strict=strict)
        data = read_json(ann_file)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(ann_file, "not a COCO detection file (no 'images' list)")
        if not isinstance(data.get("categories"), list):
            raise DataError(ann_file, "not a COCO detection file (no 'categories' list)")
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError(ann_file, "'annotations' is not a list")

        names_by_id = _categories(ann_file, data["categories"])
        category_ids = _select_categories(ann_file, names_by_id, classes)
        label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}

        if strict and not data["images"]:
            raise DataError(ann_file, "no images listed")
        images = _images(ann_file, images_dir, data["images"], issues)
        listed_ids = {e.get("id") for e in data["images"] if isinstance(e, dict)}
        anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for index, ann in enumerate(annotations):
            checked = _annotation(ann_file, index, ann, listed_ids, names_by_id, issues)
            if checked is None or checked["image_id"] not in images:
                continue  # bad entry, or its image was skipped (both already reported)
            if checked["category_id"] in label_of:
                anns_by_image[checked["image_id"]].append(checked)

        records = []
        dropped: set[Any] = set()  # ids of annotations whose box cannot be kept
        for image_id, (image_path, width, height) in images.items():
            anns = anns_by_image.get(image_id, [])
            record = _record(
                ann_file, image_id, image_path, width, height, anns, label_of, issues, dropped
            )
            records.append(record)

        gt = {
            "info": data.get("info", {}),
            "licenses": data.get("licenses", []),
            "images": [img for img in data["images"] if img.get("id") in images],
            "annotations": [
                ann for anns in anns_by_image.values() for ann in anns if ann["id"] not in dropped
            ],
            "categories": [c for c in data["categories"] if c.get("id") in label_of],
        }
        super().__init__(
            records,
            classes=[names_by_id[cat_id] for cat_id in category_ids],
            category_ids=category_ids,
            coco=coco_from_dict(gt),
            issues=issues,
            transforms=transforms,
            name=str(ann_file),
        )
        self.ann_file = ann_file
        self.images_dir = images_dir


def _categories(ann_file: Path, categories: list[Any]) -> dict[int, str]:
    names_by_id: dict[int, str] = {}
    for index, cat in enumerate(categories):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and "name" in cat):
            raise DataError(ann_file, f"category entry {index} lacks an integer 'id' or 'name'")
        if cat["id"] in names_by_id:
            raise DataError(ann_file, f"category id {cat['id']} appears twice")
        names_by_id[cat["id"]] = str(cat["name"])
    if not names_by_id:
        raise DataError(ann_file, "no categories")
    return names_by_id


def _select_categories(
    ann_file: Path, names_by_id: dict[int, str], classes: list[str] | None
) -> list[int]:
    """Category ids in label order: all by increasing id, or those named by ``classes``."""
    if classes is None:
        return sorted(names_by_id)
    id_by_name: dict[str, int] = {}
    for cat_id, name in sorted(names_by_id.items()):
        id_by_name.setdefault(name, cat_id)
    unknown = [name for name in classes if name not in id_by_name]
    if unknown:
        known = ", ".join(sorted(id_by_name))
        raise DataError(
            ann_file, f"unknown class {unknown[0]!r} (the file has: {known})", kind=UNKNOWN_CLASS
        )
    if len(set(classes)) != len(classes):
        raise DataError(ann_file, f"class list names a class twice: {classes}")
    return [id_by_name[name] for name in classes]


def _images(
    ann_file: Path, images_dir: Path, entries: list[Any], issues: Issues
) -> dict[int, tuple[Path, int, int]]:
    """image id -> (path, width, height) for every usable entry of ``images``."""
    images: dict[int, tuple[Path, int, int]] = {}
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int)):
            issues.error(ann_file, f"image entry {index} lacks an integer 'id'")
            continue
        if not isinstance(entry.get("file_name"), str):
            issues.error(ann_file, f"image {entry['id']} lacks a 'file_name'")
            continue
        if entry["id"] in images:
            issues.error(ann_file, f"image id {entry['id']} appears twice")
            continue
        path = images_dir / entry["file_name"]
        if not path.is_file():
            issues.error(path, f"image file not found (listed in {ann_file.name})", MISSING_IMAGE)
            continue
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            try:  # the JSON does not say: read the size from the file header
                with Image.open(path) as img:
                    width, height = img.size
            except (OSError, SyntaxError, ValueError) as exc:
                issues.error(path, f"unreadable image ({exc})", UNREADABLE_IMAGE)
                continue
        images[entry["id"]] = (path, int(width), int(height))
    return images


def _annotation(
    ann_file: Path,
    index: int,
    ann: Any,
    listed_ids: set[Any],
    names_by_id: dict[int, str],
    issues: Issues,
) -> dict[str, Any] | None:
    """A structurally valid copy of ``ann`` (with ``area``/``iscrowd``/``id``), or None."""
    if not isinstance(ann, dict):
        issues.error(ann_file, f"annotation entry {index} is not an object")
        return None
    ann_id = ann.get("id", f"#{index}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        issues.error(ann_file, f"annotation {ann_id}: 'bbox' is not 4 numbers ({bbox!r})")
        return None
    category_id, image_id = ann.get("category_id"), ann.get("image_id")
    if category_id not in names_by_id:
        issues.error(ann_file, f"annotation {ann_id}: unknown category_id {category_id}")
        return None
    if image_id not in listed_ids:
        issues.error(ann_file, f"annotation {ann_id}: image_id {image_id} not in 'images'")
        return None
    checked = copy.copy(ann)
    checked.setdefault("id", 1_000_000_000 + index)  # pycocotools needs one; keep it unique
    checked.setdefault("iscrowd", 0)
    checked.setdefault("area", float(bbox[2] * bbox[3]))
    return checked


def _record(
    ann_file: Path,
    image_id: int,
    image_path: Path,
    width: int,
    height: int,
    anns: list[dict[str, Any]],
    label_of: dict[int, int],
    issues: Issues,
    dropped: set[Any],
) -> ImageRecord:
    """The image's record; the ids of the annotations it had to drop are added to ``dropped``."""
    boxes, labels, ignore = [], [], []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        box, problem = sanitize_box((x, y, x + w, y + h), width, height)
        if problem is not None:
            issues.fixed(ann_file, problem, f"image {image_path.name}, annotation {ann['id']}")
        if box is None:
            dropped.add(ann["id"])
            continue
        boxes.append(box)
        labels.append(label_of[ann["category_id"]])
        ignore.append(bool(ann["iscrowd"]))
    if not boxes:
        empty_boxes, empty_labels, empty_ignore = empty_record_arrays()
        return ImageRecord(
            image_id, image_path, ann_file, width, height, empty_boxes, empty_labels, empty_ignore
        )
    return ImageRecord(
        image_id=image_id,
        image_path=image_path,
        ann_path=ann_file,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        ignore=np.asarray(ignore, bool),
    )


class CachedCocoDataset(CocoDataset):
    """A :class:`CocoDataset` whose images are read from the pixel cache of its images
    folder (:mod:`detectors.data.pixels`; the files stay the reference, the cache holds
    their decoded pixels)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        folder = Path(self.records[0].image_path).parent if self.records else Path()
        self.pixels, row_of = open_pixel_cache(folder)
        self.rows = [row_of[int(record.image_id)] for record in self.records]

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.pixels[self.rows[index]]))
