"""Decoded images kept in one uint8 array on disk (``images.npy`` + ``image_ids.npy``),
read through a memory map: no decoding per image, and the operating system's page cache
shares the pixels between the processes that read them (the trials of a sweep).

``write_pixel_cache`` makes one (atomically: a crash leaves none), ``open_pixel_cache`` reads
it; :class:`~detectors.data.coco.CachedCocoDataset` is a COCO dataset whose images come
from one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from detectors.data.base import load_image

PIXELS = "images.npy"
IDS = "image_ids.npy"


def write_pixel_cache(folder: Path, images: Iterable[tuple[int, np.ndarray]], count: int) -> None:
    """Write ``count`` images (``(image_id, [H, W, 3] uint8)``, all of one size) into
    ``folder/images.npy`` and their ids into ``folder/image_ids.npy``."""
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pixels_tmp, ids_tmp = folder / f"{PIXELS}{tag}", folder / f"{IDS}{tag}"
    pixels: np.memmap | None = None
    ids = np.zeros(count, dtype=np.int64)
    try:
        for row, (image_id, image) in enumerate(images):
            if pixels is None:
                pixels = np.lib.format.open_memmap(
                    pixels_tmp, mode="w+", dtype=np.uint8, shape=(count, *image.shape)
                )
            pixels[row] = image
            ids[row] = image_id
        if pixels is None:
            return
        pixels.flush()
        del pixels
        with open(ids_tmp, "wb") as f:
            np.save(f, ids)
        os.replace(ids_tmp, folder / IDS)
        os.replace(pixels_tmp, folder / PIXELS)  # last: its presence means complete
    finally:
        for tmp in (pixels_tmp, ids_tmp):
            if tmp.exists():
                tmp.unlink()


def has_pixel_cache(folder: Path) -> bool:
    return (folder / PIXELS).is_file() and (folder / IDS).is_file()


def cache_folder_images(folder: Path, ids_and_files: list[tuple[int, Path]]) -> None:
    """Decode the images of ``folder`` once into its pixel cache (same-size images)."""

    def decoded() -> Iterable[tuple[int, np.ndarray]]:
        for image_id, path in ids_and_files:
            yield image_id, np.asarray(load_image(path))

    write_pixel_cache(folder, decoded(), len(ids_and_files))


def open_pixel_cache(folder: Path) -> tuple[np.ndarray, dict[int, int]]:
    """The cache's pixels [N, H, W, 3] (memory-mapped, read-only) and image id -> row."""
    pixels = np.load(folder / PIXELS, mmap_mode="r")
    ids = np.load(folder / IDS)
    return pixels, {int(i): r for r, i in enumerate(ids)}
