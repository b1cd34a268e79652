"""Layouts told from the folder: every COCO layout, YOLO, VOC; splits by name or path; and
the same records from every loader on the same images (BCCD in every layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detectors.data import DataError, build_dataset, check_dataset, detect_layout
from detectors.data.layout import default_splits


def _coco(images: list[str]) -> dict[str, Any]:
    return {
        "images": [
            {"id": i + 1, "file_name": n, "width": 20, "height": 10} for i, n in enumerate(images)
        ],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 4]}
            for i in range(len(images))
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }


def _write_coco(ann: Path, images_dir: Path, names: list[str]) -> None:
    ann.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(_coco(names)))
    for name in names:
        Image.new("RGB", (20, 10)).save(images_dir / name)


def test_coco_official_layout(tmp_path: Path) -> None:
    for split in ("train2017", "val2017"):
        _write_coco(
            tmp_path / "annotations" / f"instances_{split}.json",
            tmp_path / split,
            [f"{split}.png"],
        )
    (tmp_path / "annotations" / "captions_val2017.json").write_text("{}")  # another task
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.name) == ("coco", "coco-annotations")
    assert list(layout.splits) == ["train2017", "val2017"]
    assert layout.default_splits() == ("train2017", "val2017")
    dataset = build_dataset("coco", root=tmp_path, split="val2017", image_size=None, train=False)
    assert [r.image_path.name for r in dataset.records] == ["val2017.png"]


def test_coco_images_and_annotations_folders(tmp_path: Path) -> None:
    _write_coco(tmp_path / "annotations" / "train.json", tmp_path / "images", ["a.png"])
    _write_coco(tmp_path / "annotations" / "val.json", tmp_path / "images", ["b.png"])
    layout = detect_layout(tmp_path)
    assert layout.name == "coco-annotations" and layout.default_splits() == ("train", "val")
    assert layout.split("val").images == (tmp_path / "images",)
    val = build_dataset("coco", root=tmp_path, split="val", image_size=None, train=False)
    assert [r.image_path for r in val.records] == [tmp_path / "images" / "b.png"]


def test_coco_per_split_export(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        _write_coco(
            tmp_path / split / "_annotations.coco.json", tmp_path / split, [f"{split}.jpg"]
        )
    layout = detect_layout(tmp_path)
    assert (layout.name, list(layout.splits)) == ("coco-export", ["test", "train", "valid"])
    assert layout.default_splits() == ("train", "valid")
    one = detect_layout(tmp_path / "valid")  # one split folder of the export
    assert list(one.splits) == ["valid"] and one.split("valid").images == (tmp_path / "valid",)
    report = check_dataset("auto", tmp_path)
    assert report.ok and report.num_images == 3 and report.layout == "coco-export"


def test_a_split_given_as_a_path_works_even_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write_coco(root / "annotations" / "train.json", root / "images", ["a.png"])
    elsewhere = tmp_path / "elsewhere" / "extra.json"
    _write_coco(elsewhere, tmp_path / "elsewhere" / "extra", ["x.png"])
    dataset = build_dataset("coco", root=root, split=str(elsewhere), image_size=None, train=False)
    assert [r.image_path.name for r in dataset.records] == ["x.png"]
    relative = build_dataset(
        "coco", root=root, split="annotations/train.json", image_size=None, train=False
    )
    assert [r.image_path.name for r in relative.records] == ["a.png"]


def test_a_missing_split_is_one_line_listing_the_splits_and_what_a_split_is(
    tmp_path: Path,
) -> None:
    _write_coco(tmp_path / "annotations" / "train.json", tmp_path / "images", ["a.png"])
    with pytest.raises(DataError) as info:
        build_dataset("coco", root=tmp_path, split="val", image_size=None, train=False)
    text = str(info.value)
    assert "no COCO split 'val' (splits here: train;" in text and "\n" not in text
    assert "the path of an annotation JSON" in text
    with pytest.raises(DataError, match=r"no COCO split 'nope/x\.json'"):
        build_dataset("coco", root=tmp_path, split="nope/x.json", image_size=None, train=False)


def test_explicit_files_win_and_are_relative_to_the_root(tmp_path: Path) -> None:
    _write_coco(tmp_path / "labels" / "mine.json", tmp_path / "pictures", ["p.png"])
    dataset = build_dataset(
        "coco",
        root=tmp_path,
        split="train",
        image_size=None,
        train=False,
        ann_file="labels/mine.json",
        images_dir="pictures",
    )
    assert [r.image_path for r in dataset.records] == [tmp_path / "pictures" / "p.png"]


def test_ambiguous_and_unknown_folders_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        detect_layout(tmp_path)
    _write_coco(tmp_path / "annotations" / "train.json", tmp_path / "images", ["a.png"])
    (tmp_path / "data.yaml").write_text("train: images\nnames: [cell]\n")
    with pytest.raises(DataError, match="holds a coco-annotations layout and a yolo layout"):
        detect_layout(tmp_path)
    assert detect_layout(tmp_path, "yolo").kind == "yolo"  # data.kind decides
    assert detect_layout(tmp_path / "data.yaml").kind == "yolo"  # so does naming the file


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["train", "val", "test"], ("train", "val")),
        (["train2017", "val2017"], ("train2017", "val2017")),
        (["test", "train", "valid"], ("train", "valid")),
        (["trainval", "test"], ("trainval", "test")),  # VOC07's benchmark protocol
        (["a", "b"], (None, None)),
    ],
)
def test_default_splits(names: list[str], expected: tuple[str | None, str | None]) -> None:
    assert default_splits(names) == expected


# ---------------------------------------------------------------- BCCD in every layout
LOADERS = ["coco2017", "coco_images", "coco_export", "yolo_list", "yolo_mapping"]


def _records(root: Path, split: str) -> list[tuple[Any, ...]]:
    layout = detect_layout(root)
    name = {"train": 0, "val": 1}[split]
    dataset = build_dataset(
        layout.kind,
        root=root,
        split=layout.default_splits()[name] or "",
        image_size=None,
        train=False,
    )
    assert dataset.classes == ["Platelets", "RBC", "WBC"]
    return [
        (r.image_id, r.image_path.name, r.width, r.height, r.boxes.tobytes(), r.labels.tolist())
        for r in dataset.records
    ]


@pytest.mark.bccd
@pytest.mark.parametrize("name", LOADERS)
def test_every_layout_gives_the_voc_loaders_records(
    bccd_layouts: dict[str, Path], name: str
) -> None:
    for split in ("train", "val"):
        voc = _records(bccd_layouts["voc"], split)
        assert _records(bccd_layouts[name], split) == voc  # boxes compared bit for bit
        assert len(voc) == {"train": 25, "val": 13}[split]


@pytest.mark.bccd
@pytest.mark.parametrize("name", LOADERS)
def test_every_layout_gives_the_same_check_report(
    bccd_layouts: dict[str, Path], name: str
) -> None:
    voc = check_dataset("auto", bccd_layouts["voc"], decode_images=False)
    other = check_dataset("auto", bccd_layouts[name], decode_images=False)
    for key in ("num_images", "num_objects", "num_empty_images", "objects_per_class", "counts"):
        assert getattr(other, key) == getattr(voc, key), key
    assert voc.counts["zero-area box dropped"] == 2 and voc.num_images == 38
    assert other.box_sizes is not None and voc.box_sizes is not None
    assert np.array_equal(np.sort(other.box_sizes.widths), np.sort(voc.box_sizes.widths))
