from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.data import SHAPE_CLASSES, build_dataset
from detectors.data import synthetic as synthetic_module
from detectors.data.synthetic import (
    SyntheticSpec,
    ensure_synthetic,
    generate_synthetic,
    render_sample,
)

SMALL = SyntheticSpec(seed=3, num_train=40, num_val=6, image_size=64, max_objects=6)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, SMALL)
    return out


def test_same_seed_gives_identical_files(small_set: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path, SMALL)
    first, second = _files(small_set), _files(tmp_path)
    # PNGs + 2 JSON + manifest + per split the pixel cache (images.npy, image_ids.npy)
    assert len(first) == SMALL.num_train + SMALL.num_val + 3 + 4
    assert first == second


def test_the_pixel_cache_holds_the_pngs_pixels(small_set: Path) -> None:
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        folder = small_set / split / "images"
        pixels = np.load(folder / "images.npy")
        ids = np.load(folder / "image_ids.npy")
        assert len(pixels) == len(ids) == SMALL.num_images(split)
        for row in (0, len(ids) - 1):
            png = np.asarray(Image.open(folder / f"{ids[row] - 1:06d}.png").convert("RGB"))
            assert (pixels[row] == png).all()


def test_different_seed_gives_different_data(small_set: Path, tmp_path: Path) -> None:
    other = SyntheticSpec(**{**SMALL.__dict__, "seed": 4})
    generate_synthetic(tmp_path, other)
    first, second = _files(small_set), _files(tmp_path)
    assert first["train.json"] != second["train.json"]
    assert first["train/images/000000.png"] != second["train/images/000000.png"]


def test_boxes_are_the_visible_pixels_of_each_shape(small_set: Path) -> None:
    coco = json.loads((small_set / "train.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index in range(10):
        sample = render_sample(SMALL, "train", index)
        saved = np.asarray(Image.open(small_set / "train" / "images" / f"{index:06d}.png"))
        assert np.array_equal(saved, sample.image)
        anns = by_image.get(index + 1, [])
        assert len(anns) == len(sample.objects)
        for ann, obj in zip(anns, sample.objects):
            rows, cols = np.nonzero(sample.instances == obj.instance_id)
            tight = [
                cols.min(),
                rows.min(),
                cols.max() + 1 - cols.min(),
                rows.max() + 1 - rows.min(),
            ]
            assert ann["bbox"] == [int(v) for v in tight]
            assert ann["category_id"] == obj.label + 1
            assert ann["area"] == len(rows) == obj.visible_pixels
            x, y, w, h = ann["bbox"]
            assert min(x, y) >= 0 and w > 0 and h > 0
            assert max(x + w, y + h) <= SMALL.image_size


def test_hidden_objects_are_dropped_and_kept_ones_mostly_visible() -> None:
    drawn = kept = occluded = 0
    for index in range(40):
        sample = render_sample(SMALL, "train", index)
        drawn += sample.num_drawn
        kept += len(sample.objects)
        for obj in sample.objects:
            assert obj.visible_pixels >= SMALL.min_visible * obj.full_pixels
            occluded += obj.visible_pixels < obj.full_pixels
    assert kept < drawn  # some shapes were hidden (< 30 % visible) and not annotated
    assert occluded > 0  # and some annotated ones are partly covered or cut by the border


def test_all_classes_scales_and_aspects_present(small_set: Path) -> None:
    coco = json.loads((small_set / "train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, 6))
    sides = np.array([a["bbox"][2:] for a in coco["annotations"]], dtype=float)
    areas = sides[:, 0] * sides[:, 1]
    assert areas.max() / areas.min() > 20  # small to large
    aspect = sides[:, 0] / sides[:, 1]
    assert aspect.min() < 0.5 and aspect.max() > 2


def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = synthetic_module.generate_synthetic

    def counting(out_dir: Path, spec: SyntheticSpec) -> None:
        calls.append(spec)
        real(out_dir, spec)

    monkeypatch.setattr(synthetic_module, "generate_synthetic", counting)
    params = {"seed": 1, "num_train": 4, "num_val": 2, "image_size": 32, "max_objects": 3}
    first = ensure_synthetic(tmp_path, **params)
    mtime = (first / "train.json").stat().st_mtime_ns
    second = ensure_synthetic(tmp_path, **params)
    assert second == first and len(calls) == 1
    assert (first / "train.json").stat().st_mtime_ns == mtime
    other = ensure_synthetic(tmp_path, **{**params, "seed": 2})
    assert other != first and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(out_dir: Path, spec: SyntheticSpec) -> None:
        (out_dir / "train.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_module, "generate_synthetic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, num_train=2, num_val=1, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_build_dataset_on_a_cache_folder(tmp_path: Path) -> None:
    spec = {"seed": 0, "num_train": 3, "num_val": 2, "image_size": 48, "max_objects": 3}
    dataset = build_dataset(
        "synthetic", root=tmp_path, split="val", image_size=96, train=False, synthetic=spec
    )
    assert len(dataset) == 2 and dataset.classes == list(SHAPE_CLASSES)
    assert dataset.category_ids == [1, 2, 3, 4, 5]
    image, target = dataset[0]
    assert image.shape == (3, 96, 96) and target["scale"] == 2.0
    assert target["image_id"] == 1 and target["orig_size"] == (48, 48)
