"""What a dataset folder holds: its kind, its layout, and the files of each of its splits.

``detect_layout(path)`` looks at a folder (or a file) and returns a :class:`Layout`: the kind
(``voc``, ``coco``, ``yolo``, ``synthetic``), the layout's name and the splits found there,
each with its files. It decides only when the folder leaves no doubt; otherwise the
:class:`DataError` names what it looked for, or the two things it found.
``Layout.split(name)`` turns a split name, or a path, into files, and
``Layout.default_splits()`` picks the training and validation splits among those found.

COCO layouts (an annotation JSON + the folder its ``file_name`` entries are relative to):

- ``coco-annotations``: ``annotations/<name>.json``; the split is the file's stem without
  ``instances_`` (only the ``instances_*`` files when there are any: captions and keypoints
  are other tasks). Its images: ``<split>/`` (COCO 2017: ``annotations/instances_train2017
  .json`` + ``train2017/``), ``images/<split>/`` or ``images/``.
- ``coco-export``: ``<split>/_annotations.coco.json`` with the split's images beside it (the
  per-split export of annotation tools); the path may also be one such split folder.
- ``coco-flat``: ``<split>.json`` + ``<split>/images/`` or ``<split>/`` (the synthetic set).
- ``coco-file``: the path is the JSON itself, one split named after it; images in
  ``<stem>/images/``, ``<stem>/``, ``images/``, ``../<stem>/``, ``../images/<stem>/`` or
  ``../images/`` from it (stem without ``instances_``), else its own folder.

YOLO (Ultralytics): a dataset YAML, given as the path or the only YAML with ``names`` in the
folder (see :func:`read_yolo_yaml`). VOC: ``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt`` (roots as in :mod:`detectors.data.voc`, ``a+b`` included).
The synthetic set: corrtune's generated folder (its ``manifest.json``).

A split given as a path (it has a ``/`` or ends in ``.json``, ``.txt``): relative to the
dataset root, else to the working folder; a COCO annotation JSON, a YOLO image folder or
image list, a VOC split list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detectors.data.errors import BAD_ROOT, BAD_SPLIT, DataError
from detectors.data.synthetic import MANIFEST
from detectors.data.voc import available_splits, resolve_voc_roots

EXPORT_JSON = "_annotations.coco.json"
YOLO_SPLIT_KEYS = ("train", "val", "test")
KINDS = ("voc", "coco", "yolo", "synthetic")
KIND_NAMES = {"voc": "VOC", "coco": "COCO", "yolo": "YOLO", "synthetic": "synthetic"}


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split. Which fields a kind uses: coco ``ann_file`` (the JSON) and
    ``images`` (one folder); yolo ``images`` (folders or ``.txt`` image lists); voc
    ``ann_file`` only for a split list given as a path (else the loader reads
    ``ImageSets/Main/<name>.txt``)."""

    name: str
    ann_file: Path | None = None
    images: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Layout:
    kind: str  # voc, coco, yolo or synthetic
    name: str  # the layout, e.g. coco-annotations (see the module docstring)
    root: str  # the path as given, user folder expanded (VOC: may be "a+b")
    splits: dict[str, SplitFiles] = field(default_factory=dict)  # name -> files, sorted
    names: tuple[str, ...] = ()  # yolo: the class names of its YAML
    source: Path | None = None  # the file that describes the dataset (YOLO YAML, COCO JSON)

    def split(self, split: str) -> SplitFiles:
        """The files of ``split``: a name found here, or a path (module docstring).
        Anything else is one :class:`DataError` listing the splits there are."""
        if split in self.splits:
            return self.splits[split]
        if self.kind == "voc" and split == "all":
            return SplitFiles(split)
        if _looks_like_path(split):
            path = self._find(split)
            if path is not None:
                return self._path_split(path)
        have = ", ".join(self.splits) or "none"
        what = {
            "coco": "the path of an annotation JSON",
            "yolo": "the path of an image folder or image list",
            "voc": "the path of a split list (one image id a line)",
        }.get(self.kind, "")
        raise DataError(
            self.root,
            f"no {KIND_NAMES[self.kind]} split {split!r} (splits here: {have}; a split is one "
            + (f"of those names or {what})" if what else "of those names)"),
            kind=BAD_SPLIT,
        )

    def default_splits(self) -> tuple[str | None, str | None]:
        """``(train, val)`` among the splits found: ``train``, the first ``train*`` or
        ``trainval``; then ``val``, ``valid``, ``validation``, the first ``val*``, ``test``, the
        first ``test*``. None where no split fits."""
        return default_splits(list(self.splits))

    def _find(self, split: str) -> Path | None:
        given = Path(split).expanduser()
        base = Path(self.root.split("+")[0]).expanduser()
        base = base.parent if base.is_file() else base
        candidates = [given] if given.is_absolute() else [base / given, given]
        return next((p for p in candidates if p.exists()), None)

    def _path_split(self, path: Path) -> SplitFiles:
        name = str(path)
        if self.kind == "coco" and path.is_file():
            return SplitFiles(name, ann_file=path, images=(coco_images_near(path),))
        if self.kind == "yolo":
            return SplitFiles(name, images=(path,))
        if self.kind == "voc" and path.is_file():
            return SplitFiles(name, ann_file=path)
        raise DataError(path, f"not a {self.kind} split (a file or folder of the wrong kind)")


def default_splits(names: Sequence[str]) -> tuple[str | None, str | None]:
    """See :meth:`Layout.default_splits`."""

    def first(exact: Sequence[str], prefixes: Sequence[str], exclude: str | None) -> str | None:
        for want in exact:
            if want in names and want != exclude:
                return want
        for prefix in prefixes:
            for name in names:
                if name.startswith(prefix) and name != exclude and not name.startswith("trainval"):
                    return name
        return None

    train = first(["train"], ["train"], None) or first(["trainval"], [], None)
    val = first(["val", "valid", "validation"], ["val"], train) or first(["test"], ["test"], train)
    return train, val


def _looks_like_path(split: str) -> bool:
    return "/" in split or "\\" in split or split.endswith((".json", ".txt", ".yaml", ".yml"))


# --------------------------------------------------------------------------- detection
def detect_layout(root: str | Path | Sequence[str | Path], kind: str | None = None) -> Layout:
    """The layout at ``root`` (of ``kind`` only, when given). See the module docstring."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if not isinstance(root, str | Path):  # a list of VOC roots
        if kind not in (None, "voc"):
            raise DataError(str(root), f"a {kind} dataset has one root", kind=BAD_ROOT)
        return _voc_layout([Path(r) for r in root], "+".join(str(r) for r in root))
    text = str(root)
    path = Path(text).expanduser()
    if not path.exists():
        if "+" in text and kind in (None, "voc"):
            return _voc_layout(resolve_voc_roots(text), text)
        raise DataError(path, "dataset root not found", kind=BAD_ROOT)
    found: list[Layout] = []
    for finder_kind, finder in FINDERS:
        if kind is not None and finder_kind != kind:
            continue
        layout = finder(path)
        if layout is not None:
            found.append(layout)
            if finder_kind == "synthetic":  # a generated set is also coco-flat: it wins
                return layout
    if not found:
        looked = "VOC Annotations/, COCO annotations/*.json, */_annotations.coco.json or "
        looked += "*.json, a YOLO dataset YAML with names"
        if kind is not None:
            looked = {
                "voc": "Annotations/",
                "coco": "annotations/*.json, */_annotations.coco.json, *.json",
                "yolo": "a dataset YAML with names",
                "synthetic": MANIFEST,
            }[kind]
        raise DataError(
            path, f"cannot tell the dataset layout (looked for {looked})", kind=BAD_ROOT
        )
    if len(found) > 1:
        names = " and ".join(f"a {f.name} layout" for f in found)
        raise DataError(
            path,
            f"holds {names}: set data.kind, or name the annotation file or YAML as the root",
            kind=BAD_ROOT,
        )
    return found[0]


def _voc_layout(roots: Sequence[Path], text: str) -> Layout:
    folders = resolve_voc_roots(list(roots))
    shared = set(available_splits(folders[0]))
    for folder in folders[1:]:
        shared &= set(available_splits(folder))
    return Layout("voc", "voc", text, {s: SplitFiles(s) for s in sorted(shared)})


def _find_voc(path: Path) -> Layout | None:
    if path.is_file():
        return None
    if (path / "Annotations").is_dir() or any(
        (child / "Annotations").is_dir() for child in path.iterdir() if child.is_dir()
    ):
        return _voc_layout([path], str(path))
    return None


def _find_synthetic(path: Path) -> Layout | None:
    if not (path / MANIFEST).is_file():
        return None
    splits = {
        s: SplitFiles(s, path / f"{s}.json", (path / s / "images",)) for s in ("train", "val")
    }
    return Layout("synthetic", "synthetic", str(path), splits)


def _find_coco_file(path: Path) -> Layout | None:
    if not (path.is_file() and path.suffix == ".json"):
        return None
    name = path.parent.name if path.name == EXPORT_JSON else path.stem.removeprefix("instances_")
    split = SplitFiles(name, path, (coco_images_near(path),))
    return Layout("coco", "coco-file", str(path), {name: split}, source=path)


def _find_coco_annotations(path: Path) -> Layout | None:
    folder = path / "annotations"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    instances = [f for f in files if f.name.startswith("instances_")]
    splits = {}
    for ann_file in instances or files:
        name = ann_file.stem.removeprefix("instances_")
        near = [path / name, path / "images" / name, path / "images"]
        images = next((d for d in near if d.is_dir()), None)
        splits[name] = SplitFiles(name, ann_file, (images,) if images else ())
    return Layout("coco", "coco-annotations", str(path), splits)


def _find_coco_export(path: Path) -> Layout | None:
    if path.is_file():
        return None
    if (path / EXPORT_JSON).is_file():  # one split folder of an export
        split = SplitFiles(path.name, path / EXPORT_JSON, (path,))
        return Layout("coco", "coco-export", str(path), {path.name: split})
    folders = sorted(c for c in path.iterdir() if (c / EXPORT_JSON).is_file())
    if not folders:
        return None
    splits = {c.name: SplitFiles(c.name, c / EXPORT_JSON, (c,)) for c in folders}
    return Layout("coco", "coco-export", str(path), splits)


def _find_coco_flat(path: Path) -> Layout | None:
    if path.is_file():
        return None
    files = sorted(p for p in path.glob("*.json") if p.name not in (MANIFEST, EXPORT_JSON))
    if not files:
        return None
    splits = {}
    for ann_file in files:
        near = [path / ann_file.stem / "images", path / ann_file.stem]
        images = next((d for d in near if d.is_dir()), None)
        splits[ann_file.stem] = SplitFiles(ann_file.stem, ann_file, (images,) if images else ())
    return Layout("coco", "coco-flat", str(path), splits)


def _find_yolo(path: Path) -> Layout | None:
    if path.is_file():
        if path.suffix not in (".yaml", ".yml"):
            return None
        yaml_file = path
    else:
        candidates = [p for p in sorted(path.glob("*.y*ml")) if _is_yolo_yaml(p)]
        if not candidates:
            return None
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(
                path, f"holds several dataset YAMLs ({names}): name one as the root", kind=BAD_ROOT
            )
        yaml_file = candidates[0]
    _, entries, classes = read_yolo_yaml(yaml_file)
    splits = {key: SplitFiles(key, images=tuple(paths)) for key, paths in entries.items()}
    return Layout("yolo", "yolo", str(path), splits, names=tuple(classes), source=yaml_file)


def _is_yolo_yaml(path: Path) -> bool:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(values, dict) and "names" in values


# kind -> finder, tried in this order; a folder two finders claim is ambiguous.
FINDERS: list[tuple[str, Callable[[Path], Layout | None]]] = [
    ("synthetic", _find_synthetic),
    ("voc", _find_voc),
    ("coco", _find_coco_file),
    ("coco", _find_coco_annotations),
    ("coco", _find_coco_export),
    ("coco", _find_coco_flat),
    ("yolo", _find_yolo),
]


def coco_images_near(ann_file: Path) -> Path:
    """The images folder of an annotation JSON given alone (see ``coco-file`` above)."""
    stem = ann_file.stem.removeprefix("instances_")
    near = [ann_file.parent / stem / "images", ann_file.parent / stem, ann_file.parent / "images"]
    # annotations/instances_val2017.json -> val2017/, images/val2017/ or images/
    up = ann_file.parent.parent
    near += [up / stem, up / "images" / stem, up / "images"]
    return next((d for d in near if d.is_dir()), ann_file.parent)


# -------------------------------------------------------------------------------- YOLO
def read_yolo_yaml(path: Path) -> tuple[Path, dict[str, list[Path]], list[str]]:
    """``(root, split -> image folders or lists, class names)`` of an Ultralytics YAML.

    ``path`` (optional): the dataset root, absolute or relative to the YAML's folder (a
    stale relative ``path`` that does not exist there falls back to the YAML's folder, as a
    dataset is often moved with its YAML). ``train``, ``val``, ``test``: a folder, a ``.txt``
    list of images, or a list of those, relative to the root (a ``../x`` that does not exist
    is read as ``x``, as Ultralytics does for exported datasets). ``names``: a list, or a
    mapping ``{0: name, 1: name, ...}`` with every index from 0; ``nc``, if there, must
    agree. Other keys (``download``, ...) are not ours and are left alone.
    """
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable dataset YAML ({exc})", kind=BAD_ROOT) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DataError(path, f"invalid YAML{where}", kind=BAD_ROOT) from None
    if not isinstance(values, dict):
        raise DataError(path, "not a dataset YAML (expected a mapping)", kind=BAD_ROOT)
    names = _yolo_names(path, values.get("names"))
    nc = values.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(path, f"nc: {nc!r} but names lists {len(names)} classes", kind=BAD_ROOT)
    entries = {k: _as_list(path, k, values[k]) for k in YOLO_SPLIT_KEYS if values.get(k)}
    if not entries:
        raise DataError(path, "names no split (train, val or test)", kind=BAD_ROOT)
    root = _yolo_root(path, values.get("path"), entries)
    return root, {k: [_yolo_entry(root, e) for e in v] for k, v in entries.items()}, names


def _yolo_names(path: Path, names: Any) -> list[str]:
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        keys = sorted(names, key=lambda k: (not isinstance(k, int), str(k)))
        if keys != list(range(len(names))):
            raise DataError(
                path, f"names: the keys must be 0..{len(names) - 1}, got {keys}", kind=BAD_ROOT
            )
        return [str(names[i]) for i in range(len(names))]
    raise DataError(path, f"names: expected a list or a mapping of class names, got {names!r}")


def _as_list(path: Path, key: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise DataError(path, f"{key}: expected a path or a list of paths, got {value!r}")
    return list(items)


def _yolo_root(path: Path, given: Any, entries: dict[str, list[str]]) -> Path:
    here = path.parent
    if given is None or given == "":
        return here
    if not isinstance(given, str):
        raise DataError(path, f"path: expected a folder, got {given!r}", kind=BAD_ROOT)
    root = Path(given).expanduser()
    if root.is_absolute():
        return root
    for candidate in (here / root, here):
        if any(_yolo_entry(candidate, e).exists() for v in entries.values() for e in v):
            return candidate.resolve()
    raise DataError(
        path, f"path: {given!r} not found (relative to the YAML's folder)", kind=BAD_ROOT
    )


def _yolo_entry(root: Path, entry: str) -> Path:
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path
    found = root / path
    if not found.exists() and entry.startswith("../"):
        found = root / entry[3:]
    return found
