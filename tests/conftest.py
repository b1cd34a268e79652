from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "data" / "bccd"

# Tests run on CPU with few threads: keep torch from oversubscribing the CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip on a machine without a CUDA device (``pytest -m cuda``
    selects them; benchmarks/gpu_check.sh runs them on a GPU, where none may skip)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if not torch.cuda.is_available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture
def bccd_root() -> Path:
    if not (BCCD / "BCCD" / "Annotations").is_dir():
        pytest.skip("BCCD data not present at ../shared/data/bccd")
    return BCCD / "BCCD"


# ------------------------------------------------------------------ BCCD in every layout
# A subset of BCCD written in each layout corrtune reads, in a temporary folder (images are
# symlinks): the same images and boxes, so every loader must give the same records. Both
# of BCCD's zero-area boxes are in it (BloodImage_00343 in train, 00338 in val).
SUBSET = {"train": 24, "val": 12}
ZERO_AREA = {"train": "BloodImage_00343", "val": "BloodImage_00338"}


def _voc_objects(xml: Path) -> tuple[int, int, list[tuple[str, float, float, float, float]]]:
    root = ET.parse(xml).getroot()
    width, height = int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0)
    objects = []
    for obj in root.findall("object"):
        box = [
            float(obj.findtext(f"bndbox/{k}") or "nan") for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        objects.append((str(obj.findtext("name")).strip(), *box))
    return width, height, objects  # type: ignore[return-value]


def _xywh(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """VOC's 1-based inclusive box as the loader reads it ([xmin - 1, ymin - 1, xmax, ymax]);
    a click (xmax == xmin) stays zero-area."""
    w = xmax - xmin + 1 if xmax > xmin else xmax - xmin
    h = ymax - ymin + 1 if ymax > ymin else ymax - ymin
    return [xmin - 1, ymin - 1, w, h]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)


def _coco_json(voc: Path, ids: list[str], classes: list[str], path: Path) -> None:
    images, annotations = [], []
    for image_id, stem in enumerate(ids, start=1):
        width, height, objects = _voc_objects(voc / "Annotations" / f"{stem}.xml")
        images.append(
            {"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height}
        )
        for name, *box in objects:
            xywh = _xywh(*box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": classes.index(name) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def _yolo_labels(voc: Path, stem: str, classes: list[str], path: Path) -> None:
    width, height, objects = _voc_objects(voc / "Annotations" / f"{stem}.xml")
    lines = []
    for name, *box in objects:
        x, y, w, h = _xywh(*box)
        values = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
        lines.append(" ".join([str(classes.index(name)), *(repr(v) for v in values)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def build_layouts(voc: Path, out: Path, subset: dict[str, int] | None = SUBSET) -> dict[str, Path]:
    """The BCCD subset (None: all of train and val) as a VOC folder and in every COCO and
    YOLO layout, under ``out``."""
    main = voc / "ImageSets" / "Main"
    splits = {}
    for split in ("train", "val"):
        ids = main.joinpath(f"{split}.txt").read_text().split()
        ids = ids[: subset[split]] if subset else ids
        splits[split] = sorted({*ids, ZERO_AREA[split]})
    classes = ["Platelets", "RBC", "WBC"]  # VOC's order: sorted names
    jpeg = voc / "JPEGImages"
    roots = {name: out / name for name in ("voc", "coco2017", "coco_images", "coco_export")}
    roots |= {"yolo_list": out / "yolo_list", "yolo_mapping": out / "yolo_mapping"}
    for split, ids in splits.items():
        for stem in ids:
            _link(
                voc / "Annotations" / f"{stem}.xml", roots["voc"] / "Annotations" / f"{stem}.xml"
            )
            _link(jpeg / f"{stem}.jpg", roots["voc"] / "JPEGImages" / f"{stem}.jpg")
            _link(jpeg / f"{stem}.jpg", roots["coco2017"] / f"{split}2017" / f"{stem}.jpg")
            _link(jpeg / f"{stem}.jpg", roots["coco_images"] / "images" / f"{stem}.jpg")
            export = "valid" if split == "val" else split
            _link(jpeg / f"{stem}.jpg", roots["coco_export"] / export / f"{stem}.jpg")
            for name in ("yolo_list", "yolo_mapping"):
                _link(jpeg / f"{stem}.jpg", roots[name] / "images" / split / f"{stem}.jpg")
                _yolo_labels(voc, stem, classes, roots[name] / "labels" / split / f"{stem}.txt")
        main_out = roots["voc"] / "ImageSets" / "Main"
        main_out.mkdir(parents=True, exist_ok=True)
        (main_out / f"{split}.txt").write_text("\n".join(ids) + "\n")
        _coco_json(
            voc, ids, classes, roots["coco2017"] / "annotations" / f"instances_{split}2017.json"
        )
        _coco_json(voc, ids, classes, roots["coco_images"] / "annotations" / f"{split}.json")
        export = "valid" if split == "val" else split
        _coco_json(voc, ids, classes, roots["coco_export"] / export / "_annotations.coco.json")
    names_list = "names: [Platelets, RBC, WBC]\n"
    names_map = "names:\n  0: Platelets\n  1: RBC\n  2: WBC\n"
    # One YAML with an absolute `path`, one without (the YAML's folder is the root).
    (roots["yolo_list"] / "data.yaml").write_text(
        f"path: {roots['yolo_list']}\ntrain: images/train\nval: images/val\n{names_list}"
    )
    (roots["yolo_mapping"] / "data.yaml").write_text(
        f"train: images/train\nval: images/val\nnc: 3\n{names_map}"
    )
    return roots


@pytest.fixture(scope="session")
def bccd_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The BCCD subset in every layout (skips without BCCD): name -> dataset root."""
    if not (BCCD / "BCCD" / "Annotations").is_dir():
        pytest.skip("BCCD data not present at ../shared/data/bccd")
    return build_layouts(BCCD / "BCCD", tmp_path_factory.mktemp("bccd-layouts"))
