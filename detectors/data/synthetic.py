"""Synthetic "irregular shapes" detection data, deterministic by seed, written as COCO.

Each image has a textured, noisy background and 1..``max_objects`` shapes of the classes in
``SHAPE_CLASSES``, each with a random size (small to large), aspect, rotation, colour and
texture, so the class can only be told from the outline. Later shapes are drawn over
earlier ones; an object is annotated with the box of its VISIBLE pixels (``area`` = their
count) and dropped when less than ``min_visible`` of it is visible (its fragments stay in
the image as clutter, as unannotated occluded objects do in real data).

Layout of a generated folder: ``<split>/images/NNNNNN.png`` (and the same pixels decoded in
``<split>/images/images.npy``, :mod:`detectors.data.pixels`) and ``<split>.json`` (COCO) for
``train`` and ``val``, plus ``manifest.json`` with the parameters. ``ensure_synthetic``
keeps one such folder per parameter set in a cache directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detectors.data.errors import BAD_ROOT, DataError
from detectors.data.pixels import write_pixel_cache

# Bump whenever the drawing changes: it is part of the cache key, so old caches are not reused.
GENERATOR_VERSION = 1
SHAPE_CLASSES = ("ellipse", "concave_polygon", "star", "ring", "thin_bar")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
MIN_VISIBLE_PIXELS = 4  # fewer visible pixels than this is never an object
STALE_TMP_S = 3600.0  # temp folders older than this are leftovers of an interrupted run


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic set (all of them are in the cache key)."""

    seed: int = 0
    num_train: int = 512
    num_val: int = 128
    image_size: int = 128  # images are square, image_size x image_size
    max_objects: int = 6  # objects drawn per image: uniform in 1..max_objects
    min_visible: float = 0.3  # annotate only objects at least this visible
    min_object_size: float = 0.08  # object extent / image side: log-uniform in [min, max]
    max_object_size: float = 0.6

    def key(self) -> str:
        payload = json.dumps(
            {**dataclasses.asdict(self), "generator_version": GENERATOR_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


@dataclass
class SyntheticObject:
    instance_id: int  # its value in ``Sample.instances`` (drawing order, from 1)
    label: int  # index into SHAPE_CLASSES
    box: tuple[int, int, int, int]  # xyxy of the visible pixels (pixel edges)
    visible_pixels: int
    full_pixels: int  # pixels of the whole shape, also those occluded or outside the image


@dataclass
class Sample:
    image: np.ndarray  # [H, W, 3] uint8
    instances: np.ndarray  # [H, W] int16: 0 background, k + 1 where shape k is on top
    objects: list[SyntheticObject]  # the annotated (visible enough) shapes
    num_drawn: int  # shapes drawn, annotated or not


def _ellipse(a: float, b: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _shape(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline [K, 2] (x, y), radius ~1, and an optional hole outline, for ``kind``."""
    if kind == "ellipse":
        return _ellipse(1.0, rng.uniform(0.35, 1.0)), None
    if kind == "ring":
        aspect, hole = rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.7)
        return _ellipse(1.0, aspect), _ellipse(hole, hole * aspect)
    if kind == "star":
        points = int(rng.integers(5, 9))
        angles = np.arange(2 * points) * math.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
        radii = radii * rng.uniform(0.9, 1.1, 2 * points)
        outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return outline * [1.0, rng.uniform(0.75, 1.0)], None
    if kind == "concave_polygon":
        corners = int(rng.integers(6, 10))
        angles = (np.arange(corners) + rng.uniform(-0.3, 0.3, corners)) * 2 * math.pi / corners
        radii = rng.uniform(0.75, 1.0, corners)
        notches = rng.choice(corners, size=int(rng.integers(1, 3)), replace=False)
        radii[notches] = rng.uniform(0.1, 0.35, len(notches))
        outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return outline * [1.0, rng.uniform(0.6, 1.0)], None
    if kind == "thin_bar":
        half_width = rng.uniform(0.07, 0.16)
        return np.array(
            [[-1, -half_width], [1, -half_width], [1, half_width], [-1, half_width]]
        ), None
    raise ValueError(f"unknown shape {kind!r}")


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform pixel noise of standard deviation ``std`` (float32, fast to draw)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(std * 12**0.5)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field [size, size] in about [0, 1] (bicubic upsampled noise)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    field = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    colour_a, colour_b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    blend = _smooth_field(rng, size, int(rng.integers(2, 7)))[..., None]  # [S, S, 1]
    image = colour_a.astype(np.float32) * (1 - blend) + colour_b.astype(np.float32) * blend
    grain = _smooth_field(rng, size, int(rng.integers(12, 24)))[..., None] - 0.5
    image += grain * np.float32(rng.uniform(10, 50))
    image += _noise(rng, (size, size, 1), rng.uniform(3, 12))
    return image


def _texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """Object fill [height, width, 3]: flat, gradient or stripes between two colours, + noise."""
    other = np.clip(colour + rng.normal(0, 50, 3), 0, 255)
    kind = int(rng.integers(3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == 0:
        mix = np.zeros((height, width), np.float32)
    elif kind == 1:
        mix = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    else:
        mix = 0.5 + 0.5 * np.sin(along * np.float32(2 * math.pi / rng.uniform(3, 10)))
    fill = (
        colour.astype(np.float32) * (1 - mix[..., None])
        + other.astype(np.float32) * mix[..., None]
    )
    return fill + _noise(rng, (height, width, 3), rng.uniform(3, 10))


def render_sample(spec: SyntheticSpec, split: str, index: int) -> Sample:
    """Draw image ``index`` of ``split``: a pure function of (spec, split, index)."""
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, GENERATOR_VERSION])
    size = spec.image_size
    image = _background(rng, size)
    instances = np.zeros((size, size), np.int16)
    max_radius = spec.max_object_size * size / 2
    pad = math.ceil(max_radius) + 2
    full_pixels = []
    labels = []
    num_objects = int(rng.integers(1, spec.max_objects + 1))
    for k in range(num_objects):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        outline, hole = _shape(SHAPE_CLASSES[label], rng)
        radius = math.exp(
            rng.uniform(math.log(spec.min_object_size * size / 2), math.log(max_radius))
        )
        if SHAPE_CLASSES[label] == "thin_bar":  # keep the bar at least ~2 px thick
            radius = min(max(radius, 1.0 / float(abs(outline[0, 1]))), max_radius)
        angle = rng.uniform(0, 2 * math.pi)
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        centre = rng.uniform(0, size, 2) + pad
        canvas = Image.new("L", (size + 2 * pad, size + 2 * pad), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon, fill in ((outline, 1), (hole, 0)):
            if polygon is not None:
                points = polygon * radius @ rotation.T + centre  # [K, 2]
                draw.polygon([(float(x), float(y)) for x, y in points], fill=fill)
        full_mask = np.asarray(canvas, dtype=bool)
        mask = full_mask[pad : pad + size, pad : pad + size]  # [S, S]
        full_pixels.append(int(full_mask.sum()))
        labels.append(label)
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        local_mean = image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        for _ in range(8):  # a colour that stands out from what is under it
            colour = rng.uniform(0, 255, 3)
            if np.abs(colour - local_mean).sum() >= 120:
                break
        pixels = _texture(rng, int(y1 - y0), int(x1 - x0), colour)
        local_mask = mask[y0:y1, x0:x1]
        image[y0:y1, x0:x1][local_mask] = pixels[local_mask]
        instances[mask] = k + 1
    image += _noise(rng, image.shape, rng.uniform(1, 4))  # sensor noise, on everything
    objects = []
    for k, (label, full) in enumerate(zip(labels, full_pixels)):
        visible = instances == k + 1
        count = int(visible.sum())
        if count < MIN_VISIBLE_PIXELS or count < spec.min_visible * full:
            continue
        rows, cols = np.nonzero(visible)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        objects.append(SyntheticObject(k + 1, label, box, count, full))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Sample(pixels, instances, objects, num_objects)


def _render_split(
    spec: SyntheticSpec,
    split: str,
    images_dir: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
) -> Iterator[tuple[int, np.ndarray]]:
    """Draw every image of ``split``: save its PNG, append its COCO image and annotations,
    and yield ``(image_id, pixels)``."""
    for index in range(spec.num_images(split)):
        sample = render_sample(spec, split, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(sample.image).save(images_dir / file_name, compress_level=1)
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": spec.image_size,
                "height": spec.image_size,
            }
        )
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": obj.visible_pixels,
                    "iscrowd": 0,
                    "visible_fraction": round(obj.visible_pixels / obj.full_pixels, 4),
                }
            )
        yield image_id, sample.image


def generate_synthetic(out_dir: str | Path, spec: SyntheticSpec) -> None:
    """Write the set into ``out_dir`` (not atomic: ``ensure_synthetic`` makes it so)."""
    out_dir = Path(out_dir)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]
    for split in SPLITS:
        images_dir = out_dir / split / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []

        # The PNGs are the set; the pixel cache beside them spares every reader the decoding.
        pixels = _render_split(spec, split, images_dir, images, annotations)
        write_pixel_cache(images_dir, pixels, spec.num_images(split))
        coco = {
            "info": {"description": f"corrtune synthetic shapes v{GENERATOR_VERSION} {split}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out_dir / f"{split}.json").write_text(json.dumps(coco), encoding="utf-8")
    manifest = {**dataclasses.asdict(spec), "generator_version": GENERATOR_VERSION}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def ensure_synthetic(
    cache_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 512,
    num_val: int = 128,
    image_size: int = 128,
    max_objects: int = 6,
    min_visible: float = 0.3,
    min_object_size: float = 0.08,
    max_object_size: float = 0.6,
) -> Path:
    """The folder of the synthetic set with these parameters, generating it if needed.

    The folder is ``cache_dir/shapes-<hash of the parameters and GENERATOR_VERSION>``. It is
    written under a temporary name and renamed into place, so it either exists complete or
    not at all; an existing one is reused without any drawing. Concurrent callers may both
    generate; the first rename wins and the other copy is discarded.
    """
    spec = SyntheticSpec(
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        max_objects=max_objects,
        min_visible=min_visible,
        min_object_size=min_object_size,
        max_object_size=max_object_size,
    )
    _validate(spec)
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"shapes-{spec.key()}"
    if final.is_dir():
        if not (final / MANIFEST).is_file():
            raise DataError(
                final, "synthetic cache folder has no manifest.json; delete it", kind=BAD_ROOT
            )
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache_dir, final.name)
    tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        generate_synthetic(tmp, spec)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _validate(spec: SyntheticSpec) -> None:
    if spec.image_size < 16 or spec.max_objects < 1 or min(spec.num_train, spec.num_val) < 0:
        raise ValueError(f"bad synthetic parameters: {spec}")
    if not 0 < spec.min_object_size <= spec.max_object_size <= 2:
        raise ValueError(f"need 0 < min_object_size <= max_object_size <= 2: {spec}")
    if not 0 <= spec.min_visible <= 1:
        raise ValueError(f"min_visible must be in [0, 1]: {spec}")


def _remove_stale_tmp(cache_dir: Path, name: str) -> None:
    """Delete temp folders of ``name`` left by interrupted runs (not recent: maybe live)."""
    now = time.time()
    for tmp in cache_dir.glob(f".tmp-{name}-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
