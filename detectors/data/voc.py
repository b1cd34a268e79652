"""PASCAL VOC style datasets: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/``.

Conventions (each one a decision; see also ``VOCDataset``):

- Roots: a VOC folder (``VOCdevkit/VOC2007``, or a flat one like ``bccd/BCCD``), a folder
  holding exactly one such folder (``bccd``), or several combined: a list, or ``a+b``
  (``VOCdevkit/VOC2007+VOC2012``: later parts are resolved next to the first if relative).
- Splits: ``ImageSets/Main/<split>.txt``, one image id per line (or the path of such a list,
  relative to the root or the working folder, for one root). A missing split file is a
  ``DataError`` that lists the splits there are (no silent fallback: it would quietly train
  and evaluate on the same images). ``split="all"`` takes every XML in ``Annotations/``.
- Classes: given names (an object of another class is a ``DataError``), or else the sorted
  unique object names over every XML of the roots (not only the split, so that train and
  val datasets agree on labels). Category id of label ``i`` is ``i + 1``.
- Coordinates: VOC stores 1-based inclusive pixel indices. The box ``[xmin - 1, ymin - 1,
  xmax, ymax]`` covers exactly the annotated pixels in continuous 0-based coordinates
  (detectron2's convention; its areas equal the devkit's ``+1`` areas). ``xmin == xmax`` in
  the file is a click, not a box: it counts as a zero-area box and is dropped.
- ``difficult`` objects are in the ground truth (``"difficult": 1``; VOC eval ignores them)
  and out of training targets unless ``include_difficult=True``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
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
    degenerate_kind,
    empty_record_arrays,
    sanitize_box,
)
from detectors.data.errors import (
    BAD_ROOT,
    BAD_SPLIT,
    MISSING_ANNOTATION,
    MISSING_IMAGE,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
    DataError,
)

ALL_SPLITS = "all"
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass
class VOCObject:
    name: str
    difficult: bool
    raw_box: tuple[float, float, float, float]  # as in the file: 1-based, inclusive


@dataclass
class VOCAnnotation:
    xml_path: Path
    filename: str | None
    width: int | None
    height: int | None
    objects: list[VOCObject]


def resolve_voc_roots(root: str | Path | Sequence[str | Path]) -> list[Path]:
    """The VOC folders named by ``root`` (see the module docstring)."""
    parts: list[str | Path]
    if isinstance(root, str | Path):
        parts = [root] if Path(root).exists() else list(str(root).split("+"))
    else:
        parts = list(root)
    if not parts:
        raise DataError("<root>", "no VOC root given", kind=BAD_ROOT)
    roots: list[Path] = []
    for index, part in enumerate(parts):
        path = Path(part).expanduser()
        if index > 0 and not path.exists() and not path.is_absolute():
            path = roots[0].parent / path  # "VOCdevkit/VOC2007+VOC2012"
        roots.append(_voc_folder(path))
    return roots


def _voc_folder(path: Path) -> Path:
    if (path / "Annotations").is_dir():
        return path
    if not path.is_dir():
        raise DataError(path, "dataset root not found", kind=BAD_ROOT)
    inner = [child for child in sorted(path.iterdir()) if (child / "Annotations").is_dir()]
    if len(inner) == 1:
        return inner[0]
    if inner:
        names = ", ".join(child.name for child in inner)
        raise DataError(
            path, f"holds several VOC folders ({names}): name one or join with '+'", kind=BAD_ROOT
        )
    raise DataError(path, "not a VOC folder (no Annotations/ directory)", kind=BAD_ROOT)


def available_splits(root: Path) -> list[str]:
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def read_split(root: Path, split: str) -> list[str]:
    """Image ids of ``split`` in file order (``"all"``: every XML, sorted)."""
    if split == ALL_SPLITS:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if split.endswith(".txt") or "/" in split:  # a split list given as a path
        given = Path(split).expanduser()
        split_file = next((p for p in (root / given, given) if p.is_file()), given)
        if not split_file.is_file():
            names = ", ".join(available_splits(root)) or "none"
            raise DataError(
                split_file,
                f"split list not found (a VOC split is a name from ImageSets/Main: {names}; "
                "or the path of a list of image ids)",
                kind=BAD_SPLIT,
            )
    if not split_file.is_file():
        known = available_splits(root)
        have = f"splits here: {', '.join(known)}" if known else "no ImageSets/Main/*.txt here"
        raise DataError(
            split_file,
            f"split file not found ({have}; split='all' takes every XML)",
            kind=BAD_SPLIT,
        )
    try:
        lines = split_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(split_file, f"unreadable split file ({exc})", kind=BAD_SPLIT) from None
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise DataError(
                split_file,
                f"line {number}: expected one image id, got {line.strip()!r}",
                kind=BAD_SPLIT,
            )
        if fields[0] in seen:
            raise DataError(
                split_file, f"line {number}: image id {fields[0]!r} listed twice", kind=BAD_SPLIT
            )
        seen.add(fields[0])
        ids.append(fields[0])
    if not ids:
        raise DataError(split_file, "split file lists no images", kind=BAD_SPLIT)
    return ids


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def parse_voc_xml(xml_path: Path, issues: Issues) -> VOCAnnotation | None:
    """Read one annotation file; None (after ``issues.error``) if it cannot be used."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        issues.error(xml_path, "annotation file not found", MISSING_ANNOTATION)
        return None
    except (ET.ParseError, OSError, UnicodeDecodeError) as exc:
        issues.error(xml_path, f"malformed XML ({exc})")
        return None
    if root.tag != "annotation":
        issues.error(xml_path, f"not a VOC annotation (root element <{root.tag}>)")
        return None
    objects = []
    for number, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            issues.error(xml_path, f"object {number} has no <name>")
            return None
        bndbox = obj.find("bndbox")
        fields = [None if bndbox is None else bndbox.findtext(key) for key in BOX_KEYS]
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in fields if v is not None)
        except ValueError:  # not numbers, or not four of them
            issues.error(xml_path, f"object {number} ({name}): <bndbox> is not 4 numbers {fields}")
            return None
        difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
        objects.append(VOCObject(name, difficult, (xmin, ymin, xmax, ymax)))
    return VOCAnnotation(
        xml_path=xml_path,
        filename=(root.findtext("filename") or "").strip() or None,
        width=_int_or_none(root.findtext("size/width")),
        height=_int_or_none(root.findtext("size/height")),
        objects=objects,
    )


def voc_class_names(
    roots: Sequence[Path], parsed: dict[Path, VOCAnnotation] | None = None
) -> list[str]:
    """Sorted unique object names over every XML of ``roots`` (unreadable files skipped).

    Files parsed on the way are stored in ``parsed`` (path -> annotation) for reuse.
    """
    names: set[str] = set()
    lenient = Issues(strict=False)
    for root in roots:
        for xml_path in sorted((root / "Annotations").glob("*.xml")):
            ann = parse_voc_xml(xml_path, lenient)
            if ann is not None:
                names.update(obj.name for obj in ann.objects)
                if parsed is not None:
                    parsed[xml_path] = ann
    return sorted(names)


def _find_image(root: Path, image_id: str, filename: str | None) -> Path | None:
    folder = root / "JPEGImages"
    candidates = [folder / filename] if filename else []
    candidates += [folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    return next((path for path in candidates if path.is_file()), None)


@dataclass
class VOCRecord(ImageRecord):
    difficult: np.ndarray  # [N] bool, the file's flag for each kept box

    per_box = (*ImageRecord.per_box, "difficult")


class VOCDataset(DetectionDataset):
    """VOC detection dataset over one or several roots (see the module docstring).

    ``strict=False`` (used by ``check_dataset``) records file-level errors in
    ``self.errors`` and skips the offending image instead of raising.
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        split: str,
        *,
        classes: list[str] | None = None,
        include_difficult: bool = False,
        transforms: Transform | None = None,
        strict: bool = True,
    ) -> None:
        self.roots = resolve_voc_roots(root)
        if len(self.roots) > 1 and (split.endswith(".txt") or "/" in split):
            raise DataError(
                split,
                "a split list given as a path reads one VOC root, not several",
                kind=BAD_SPLIT,
            )
        issues = Issues(strict=strict)
        parsed: dict[Path, VOCAnnotation] = {}
        if classes is None:
            classes = voc_class_names(self.roots, parsed)
        elif len(set(classes)) != len(classes):
            raise ValueError(f"class list names a class twice: {classes}")
        label_of = {name: label for label, name in enumerate(classes)}

        records: list[VOCRecord] = []
        for root in self.roots:
            for image_id_str in read_split(root, split):
                xml_path = root / "Annotations" / f"{image_id_str}.xml"
                ann = parsed.get(xml_path) or parse_voc_xml(xml_path, issues)
                if ann is None:
                    continue
                record = _record(
                    root, image_id_str, ann, label_of, len(records) + 1, include_difficult, issues
                )
                if record is not None:
                    records.append(record)
        if not records and strict:
            raise DataError(self.roots[0], f"split {split!r} has no images", kind=BAD_SPLIT)
        super().__init__(
            records,
            classes=list(classes),
            category_ids=[i + 1 for i in range(len(classes))],
            coco=coco_from_dict(_ground_truth(records, classes, self.roots)),
            issues=issues,
            transforms=transforms,
            name="+".join(str(r) for r in self.roots),
        )
        self.split = split
        self.include_difficult = include_difficult


def _ground_truth(
    records: Sequence[VOCRecord], classes: Sequence[str], roots: Sequence[Path]
) -> dict[str, Any]:
    """COCO dict of the kept boxes (original pixels, 0-based), with the difficult flags."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in records:
        images.append(
            {
                "id": record.image_id,
                "file_name": f"{record.image_path.parent.parent.name}/JPEGImages/"
                f"{record.image_path.name}",
                "width": record.width,
                "height": record.height,
            }
        )
        for box, label, difficult in zip(record.boxes, record.labels, record.difficult):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    "difficult": int(difficult),
                }
            )
    return {
        "info": {"description": "VOC " + "+".join(str(root) for root in roots)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
    }


def _record(
    root: Path,
    image_id_str: str,
    ann: VOCAnnotation,
    label_of: dict[str, int],
    image_id: int,
    include_difficult: bool,
    issues: Issues,
) -> VOCRecord | None:
    xml_path = ann.xml_path
    image_path = _find_image(root, image_id_str, ann.filename)
    if image_path is None:
        missing = root / "JPEGImages" / (ann.filename or f"{image_id_str}.jpg")
        issues.error(missing, f"image file not found (annotation {xml_path.name})", MISSING_IMAGE)
        return None
    unknown = [obj.name for obj in ann.objects if obj.name not in label_of]
    if unknown:
        known = ", ".join(label_of)
        issues.error(xml_path, f"unknown class {unknown[0]!r} (classes: {known})", UNKNOWN_CLASS)
        return None
    width, height = ann.width, ann.height
    if not width or not height or width <= 0 or height <= 0:
        try:  # some VOC-style files say 0x0: read the size from the image header
            with Image.open(image_path) as img:
                width, height = img.size
        except (OSError, SyntaxError, ValueError) as exc:
            issues.error(image_path, f"unreadable image ({exc})", UNREADABLE_IMAGE)
            return None
    boxes, labels, difficult = [], [], []
    for obj in ann.objects:
        xmin, ymin, xmax, ymax = obj.raw_box
        detail = f"{obj.name} [{xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}]"
        problem = degenerate_kind(xmin, ymin, xmax, ymax)  # judged on the file's own numbers
        box = None
        if problem is None:
            box, problem = sanitize_box((xmin - 1, ymin - 1, xmax, ymax), width, height)
        if problem is not None:
            issues.fixed(xml_path, problem, detail)
        if box is None:
            continue
        boxes.append(box)
        labels.append(label_of[obj.name])
        difficult.append(obj.difficult)
    empty_boxes, empty_labels, empty_flags = empty_record_arrays()
    difficult_flags = np.asarray(difficult, bool) if difficult else empty_flags
    return VOCRecord(
        image_id=image_id,
        image_path=image_path,
        ann_path=xml_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4) if boxes else empty_boxes,
        labels=np.asarray(labels, np.int64) if labels else empty_labels,
        ignore=np.zeros_like(difficult_flags) if include_difficult else difficult_flags.copy(),
        difficult=difficult_flags,
    )
