"""Annotations for real footage: YOLO txt files or a COCO json, matched to frames by file name.

Both readers return one tuple of boxes per frame, in frame order, and refuse annotations that do not
match the frames (a label file or image entry for a frame that does not exist, a frame the COCO file
does not mention, a class id or name outside the known classes, malformed lines), naming the culprit.

Annotations also name their classes: a YOLO label folder by a ``classes.txt`` (one name per line) or a
``data.yaml`` (``names:`` as a list or an id → name map) in it or in the folder above it, a COCO file by its
``categories``. ``annotation_vocabulary`` reads them. YOLO labels that name none use COCO's 80 classes
(``COCO_CLASSES``), the ids that pretrained YOLO detectors emit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from gemel_engine.data.frames import Box, check_vocabulary
from gemel_engine.errors import SourceError

# COCO's 80 detection classes, in the order of the contiguous ids (0-79) that YOLO label files use.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
YOLO_NAME_FILES = ("classes.txt", "data.yaml")
# A video file's frame N is named frame_00000N in its annotations (CVAT's YOLO and COCO exports of a video).
VIDEO_FRAME_PREFIX = "frame_"
# Largest class-name file read (a vocabulary of MAX_VOCABULARY names fits many times over).
MAX_NAME_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class AnnotationVocabulary:
    """The class names a set of annotations uses, in id order, and where they were read."""

    names: tuple[str, ...]
    # A file path, or a phrase such as "COCO's 80 classes (no classes.txt or data.yaml beside the labels)".
    source: str


def _name_file_text(path: Path) -> str:
    if path.stat().st_size > MAX_NAME_FILE_BYTES:
        raise SourceError(f"{path}: larger than {MAX_NAME_FILE_BYTES} bytes, too large for a list of class names")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read class names ({exc})") from None


def _classes_txt_names(path: Path) -> tuple[str, ...]:
    lines = [line.strip() for line in _name_file_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise SourceError(f"{path}:{lines.index('') + 1}: blank line; classes.txt holds one class name per line")
    return check_vocabulary(lines, str(path), error=SourceError)


def _data_yaml_names(path: Path) -> tuple[str, ...]:
    try:
        data = yaml.safe_load(_name_file_text(path))
    except yaml.YAMLError as exc:
        raise SourceError(f"{path}: not valid YAML ({exc})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise SourceError(f"{path}: 'names' must map the ids 0 to {len(names) - 1}, each once, to class names")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list):
        raise SourceError(f"{path}: needs 'names', a list of class names or a map from id to name")
    declared = data.get("nc")
    if declared is not None and declared != len(names):
        raise SourceError(f"{path}: 'nc' is {declared!r} but 'names' lists {len(names)} classes")
    return check_vocabulary(names, str(path), error=SourceError)


def _yolo_vocabulary(label_dir: Path) -> AnnotationVocabulary | None:
    found: list[tuple[Path, tuple[str, ...]]] = []
    for folder in (label_dir, label_dir.parent):
        for file_name in YOLO_NAME_FILES:
            path = folder / file_name
            if path.is_file():
                found.append((path, _classes_txt_names(path) if file_name == "classes.txt" else _data_yaml_names(path)))
    if not found:
        return None
    (first, names), *others = found
    for other, other_names in others:
        if other_names != names:
            raise SourceError(f"{first} and {other} name different classes; keep one, or make them agree")
    return AnnotationVocabulary(names, str(first))


def _coco_vocabulary(path: Path) -> AnnotationVocabulary:
    try:
        stat = path.stat()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read COCO annotations ({exc})") from None
    return _coco_vocabulary_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _coco_vocabulary_of(path: Path, mtime_ns: int, size: int) -> AnnotationVocabulary:
    """Return a COCO file's vocabulary; cached per version of the file (a workload reads it each time it is
    built, and a COCO file may be large)."""
    categories = _coco_categories(_coco_json(path), path)
    names = check_vocabulary([categories[key] for key in sorted(categories)], f"{path}: categories", error=SourceError)
    return AnnotationVocabulary(names, f"{path} (categories)")


def annotation_vocabulary(path: str | Path, kind: Literal["yolo", "coco"]) -> AnnotationVocabulary | None:
    """Return the class names that the annotations at ``path`` use, in id order, and where they came from.

    YOLO (``path`` is the label folder): ``classes.txt`` or ``data.yaml`` in the folder or the folder above it,
    or None when neither is there (YOLO's own convention then reads ids as ``COCO_CLASSES``). COCO (``path`` is
    the json file): its categories, in id order.

    Raises:
        SourceError: the annotations are missing, a name file is malformed (blank lines, repeated or empty names,
            'nc' disagreeing with 'names', over ``MAX_NAME_FILE_BYTES``), or two name files disagree.
    """
    path = Path(path)
    if kind == "yolo":
        if not path.is_dir():
            raise SourceError(f"{path}: YOLO label folder not found")
        return _yolo_vocabulary(path)
    return _coco_vocabulary(path)


def _clipped_box(label: str, x1: float, y1: float, x2: float, y2: float, size: tuple[int, int], where: str) -> Box:
    width, height = size
    if not (x2 > x1 and y2 > y1):
        raise SourceError(f"{where}: box has no area ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
    return Box(label, max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))


def read_yolo_labels(
    label_dir: str | Path,
    frame_names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    class_names: Sequence[str],
) -> list[tuple[Box, ...]]:
    """Return the boxes of each frame from YOLO label files (``<frame stem>.txt`` in ``label_dir``).

    Each line is ``class_id cx cy w h`` with coordinates relative to the frame size (0..1). A frame
    without a label file has no objects, as in YOLO's convention.

    Raises:
        SourceError: the folder is missing, a label file matches no frame, a line is malformed, or a class
            id is outside ``class_names``.
    """
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise SourceError(f"{label_dir}: YOLO label folder not found")
    if len(sizes) != len(frame_names):
        raise SourceError(f"{len(frame_names)} frame names but {len(sizes)} frame sizes")
    stems = {Path(name).stem: position for position, name in enumerate(frame_names)}
    orphans = sorted(
        path.name for path in label_dir.glob("*.txt") if path.stem not in stems and path.name not in YOLO_NAME_FILES
    )
    if orphans:
        raise SourceError(f"{label_dir}: label files match no frame: {', '.join(orphans[:5])}")
    boxes: list[tuple[Box, ...]] = [() for _ in frame_names]
    for stem, position in stems.items():
        path = label_dir / f"{stem}.txt"
        if not path.is_file():
            continue
        width, height = sizes[position]
        found = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            fields = line.split()
            try:
                class_id = int(fields[0])
                cx, cy, w, h = (float(value) for value in fields[1:])
            except (ValueError, IndexError):
                raise SourceError(f"{where}: expected 'class_id cx cy w h', got {line.strip()!r}") from None
            if not 0 <= class_id < len(class_names):
                raise SourceError(f"{where}: class id {class_id} is outside the {len(class_names)} known classes")
            found.append(
                _clipped_box(
                    class_names[class_id],
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                    (width, height),
                    where,
                )
            )
        boxes[position] = tuple(found)
    return boxes


def _coco_json(path: Path) -> dict[str, list[object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read COCO annotations ({exc})") from None
    sections = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in sections):
        raise SourceError(f"{path}: COCO json needs 'images', 'annotations' and 'categories' lists")
    return data


def _coco_categories(data: dict[str, list[object]], path: Path) -> dict[int, str]:
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{path}: malformed category entry ({exc})") from None
    if len(categories) != len(data["categories"]):
        raise SourceError(f"{path}: a category id is used more than once")
    return categories


def _frame_key(name: str, by_stem: bool) -> str:
    return Path(name).stem if by_stem else Path(name).name


def read_coco_annotations(
    path: str | Path, frame_names: Sequence[str], sizes: Sequence[tuple[int, int]], class_names: Sequence[str],
    *, by_stem: bool = False,
) -> list[tuple[Box, ...]]:
    """Return the boxes of each frame from a COCO json (``images``, ``annotations``, ``categories``).

    Images are matched to frames by file name (without folders), or by the name without its extension when
    ``by_stem`` (a video's frames have no files: ``frame_000123.png`` in the json is frame 123); every frame must
    have an image entry.

    Raises:
        SourceError: the file is missing or not COCO json, an image entry matches no frame, a frame has no
            image entry, an annotation names an unknown image or category, or a category name is not in
            ``class_names``.
    """
    path = Path(path)
    data = _coco_json(path)
    categories = _coco_categories(data, path)
    try:
        images = {int(i["id"]): _frame_key(str(i["file_name"]), by_stem) for i in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{path}: malformed image entry ({exc})") from None
    unknown_classes = sorted(set(categories.values()) - set(class_names))
    if unknown_classes:
        raise SourceError(f"{path}: unknown class name(s) {unknown_classes}; known: {', '.join(class_names)}")
    positions = {_frame_key(name, by_stem): position for position, name in enumerate(frame_names)}
    orphans = sorted(name for name in images.values() if name not in positions)
    if orphans:
        raise SourceError(f"{path}: image entries match no frame: {', '.join(orphans[:5])}")
    unannotated = sorted(set(positions) - set(images.values()))
    if unannotated:
        raise SourceError(f"{path}: frames without an image entry: {', '.join(unannotated[:5])}")
    boxes: list[list[Box]] = [[] for _ in frame_names]
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path}: annotation {index}"
        try:
            image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{where} is malformed (needs image_id, category_id, bbox [x, y, w, h])") from None
        if image_id not in images:
            raise SourceError(f"{where} names unknown image id {image_id}")
        if category_id not in categories:
            raise SourceError(f"{where} names unknown category id {category_id}")
        position = positions[images[image_id]]
        boxes[position].append(_clipped_box(categories[category_id], x, y, x + w, y + h, sizes[position], where))
    return [tuple(frame_boxes) for frame_boxes in boxes]
