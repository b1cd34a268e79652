"""What every loader shares: image records, box sanitation, the in-memory COCO ground truth
and the dataset class that turns a record into ``(image, target)``.

Contract of an item (see ``DetectionDataset.__getitem__``): ``image`` float32 [3, H, W] in
[0, 1]; ``target`` = ``{"boxes": float32 [N, 4] xyxy pixels of the transformed image,
"labels": int64 [N] in 0..C-1, "image_id": int, "orig_size": (H0, W0), "size": (H, W),
"scale": float}`` with ``boxes / scale`` = boxes in the original image (before any flip).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from detectors.data.errors import (
    MALFORMED_ANNOTATION,
    MISSING_IMAGE,
    SIZE_MISMATCH,
    UNREADABLE_IMAGE,
    DataError,
    Problem,
)

log = logging.getLogger(__name__)

Target = dict[str, Any]
Transform = Callable[[Any, Target], tuple[Any, Target]]

# Problem kinds: the keys of ``dataset.problems``.
NON_FINITE = "non-finite box dropped"
INVERTED = "inverted box dropped"
ZERO_AREA = "zero-area box dropped"
OUTSIDE = "box outside image dropped"
CLIPPED = "box clipped to image"

Box = tuple[float, float, float, float]


def degenerate_kind(x1: float, y1: float, x2: float, y2: float) -> str | None:
    """The problem kind of a box that cannot be kept at all, or None if it has an extent.

    Inverted (``x2 < x1`` or ``y2 < y1``) is told apart from zero-area (``x2 == x1`` or
    ``y2 == y1``) because the first usually means swapped fields and the second a click.
    """
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return NON_FINITE
    if x2 < x1 or y2 < y1:
        return INVERTED
    if x2 == x1 or y2 == y1:
        return ZERO_AREA
    return None


def sanitize_box(box: Box, width: float, height: float) -> tuple[Box | None, str | None]:
    """Clip an xyxy ``box`` to ``[0, width] x [0, height]``.

    Returns ``(box, None)`` if it was fine, ``(clipped, CLIPPED)`` if it reached outside the
    image, ``(None, kind)`` if it must be dropped (degenerate, or nothing left inside).
    """
    kind = degenerate_kind(*box)
    if kind is not None:
        return None, kind
    x1, y1, x2, y2 = box
    clipped = (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, OUTSIDE
    if clipped != (x1, y1, x2, y2):
        return clipped, CLIPPED
    return clipped, None


class Issues:
    """Collects what a loader finds while reading a dataset.

    Box-level defects are always fixed and recorded (``fixed``). File-level errors
    (``error``) raise a :class:`DataError` at once when ``strict`` (building a dataset for
    training), or are recorded so the loader can skip the file and go on (a data check).
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.problems: list[Problem] = []
        self.errors: list[DataError] = []

    def error(self, path: str | Path, message: str, kind: str = MALFORMED_ANNOTATION) -> None:
        """Raise (strict) or record a file-level error; the caller skips the file after."""
        err = DataError(path, message, kind=kind)
        if self.strict:
            raise err
        self.errors.append(err)

    def fixed(self, path: str | Path, kind: str, detail: str = "") -> None:
        self.problems.append(Problem(str(path), kind, detail))

    def counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)


@dataclass
class ImageRecord:
    """One image and its usable annotations, in ORIGINAL image pixels."""

    image_id: int  # the COCO image id (also the id in ``dataset.coco``)
    image_path: Path
    ann_path: Path  # the file the annotations came from (XML or JSON), for messages
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 xyxy, valid (sanitized) boxes
    labels: np.ndarray  # [N] int64 contiguous labels
    ignore: np.ndarray  # [N] bool: kept out of training targets (crowd, VOC difficult)

    per_box: ClassVar[tuple[str, ...]] = ("boxes", "labels", "ignore")  # the [N] fields

    def take(self, keep: np.ndarray, labels: np.ndarray) -> ImageRecord:
        """The record with only the boxes ``keep`` [N] bool, labelled ``labels`` [keep.sum()]."""
        fields = {name: getattr(self, name)[keep] for name in self.per_box}
        return dataclasses.replace(self, **(fields | {"labels": labels.astype(np.int64)}))


def empty_record_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool)


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """A ``pycocotools`` COCO object over an in-memory dataset dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_image(path: Path) -> Image.Image:
    """Decode ``path`` to an RGB PIL image (EXIF orientation is NOT applied, like COCO)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes the whole file
    except FileNotFoundError:
        raise DataError(path, "image file not found", kind=MISSING_IMAGE) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"unreadable image ({exc})", kind=UNREADABLE_IMAGE) from None


def image_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> float32 [3, H, W] in [0, 1].

    Done in numpy: torch's intra-op threads make this small copy slow on a busy CPU.
    """
    array = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1), dtype=np.float32)
    array /= 255.0
    return torch.from_numpy(array)


class DetectionDataset(Dataset[tuple[Tensor, Target]]):
    """Records + transforms; subclasses (COCO, VOC) only parse annotations into records.

    Attributes: ``classes`` (label -> name), ``category_ids`` (label -> COCO category id),
    ``coco`` (ground truth in original pixels), ``problems`` (kind -> count of defects fixed
    while loading), ``problem_details`` (each with its file), ``records``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        classes: list[str],
        category_ids: list[int],
        coco: COCO,
        issues: Issues,
        transforms: Transform | None,
        name: str,
    ) -> None:
        self.records: list[ImageRecord] = list(records)
        self.classes = classes
        self.category_ids = category_ids
        self.coco = coco
        self.transforms = transforms
        self.problems: Counter[str] = issues.counts()
        self.problem_details: list[Problem] = list(issues.problems)
        self.errors: list[DataError] = list(issues.errors)  # only when built non-strict
        if self.problems:
            summary = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.problems.items()))
            log.warning("%s: fixed annotation problems (%s)", name, summary)

    def __len__(self) -> int:
        return len(self.records)

    def relabel(self, classes: Sequence[str]) -> None:
        """Label by ``classes`` (label ``i`` = ``classes[i]``), matching names: boxes of the
        dataset's other classes leave the targets and the ground truth; a name the dataset
        lacks gets a category with no ground truth (COCO and VOC scoring skip it)."""
        new_label = {old: classes.index(n) for old, n in enumerate(self.classes) if n in classes}
        lookup = np.full(max(len(self.classes), 1), -1, np.int64)
        for old, new in new_label.items():
            lookup[old] = new
        self.records = [
            r.take(lookup[r.labels] >= 0, lookup[r.labels][lookup[r.labels] >= 0])
            for r in self.records
        ]
        id_of = {n: cat for n, cat in zip(self.classes, self.category_ids) if n in classes}
        fresh = iter(range(max(self.category_ids, default=0) + 1, 2**31))
        category_ids = [id_of[n] if n in id_of else next(fresh) for n in classes]
        gt = copy.copy(self.coco.dataset)
        kept = set(id_of.values())
        gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] in kept]
        gt["categories"] = [{"id": c, "name": n} for c, n in zip(category_ids, classes)]
        self.classes, self.category_ids = list(classes), category_ids
        self.coco = coco_from_dict(gt)

    def raw_target(self, index: int) -> Target:
        """The training target of ``index`` in original pixels (no transform applied)."""
        record = self.records[index]
        keep = ~record.ignore
        return {
            "boxes": torch.from_numpy(record.boxes[keep].astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(record.labels[keep].astype(np.int64)),
            "image_id": int(record.image_id),
            "orig_size": (record.height, record.width),
            "size": (record.height, record.width),
            "scale": 1.0,
        }

    def load_image(self, index: int) -> Image.Image:
        record = self.records[index]
        image = load_image(record.image_path)
        if image.size != (record.width, record.height):
            raise DataError(
                record.image_path,
                f"image is {image.size[0]}x{image.size[1]} but {record.ann_path.name} says "
                f"{record.width}x{record.height}",
                kind=SIZE_MISMATCH,
            )
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.load_image(index)
        target = self.raw_target(index)
        if self.transforms is None:
            return image_to_tensor(image), target
        out_image, out_target = self.transforms(image, target)
        if not isinstance(out_image, Tensor):  # transforms that stop at PIL
            out_image = image_to_tensor(out_image)
        return out_image, out_target
