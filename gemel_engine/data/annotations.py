"""Annotations for real footage: YOLO txt files or a COCO json, matched to frames by file name.

Both readers return one tuple of boxes per frame, in frame order, and refuse annotations that do not
match the frames (a label file or image entry for a frame that does not exist, a frame the COCO file
does not mention, a class id or name outside the known classes, malformed lines), naming the culprit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gemel_engine.data.frames import Box
from gemel_engine.errors import SourceError


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
    orphans = sorted(path.name for path in label_dir.glob("*.txt") if path.stem not in stems)
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


def read_coco_annotations(
    path: str | Path, frame_names: Sequence[str], sizes: Sequence[tuple[int, int]], class_names: Sequence[str]
) -> list[tuple[Box, ...]]:
    """Return the boxes of each frame from a COCO json (``images``, ``annotations``, ``categories``).

    Images are matched to frames by file name (without folders); every frame must have an image entry.

    Raises:
        SourceError: the file is missing or not COCO json, an image entry matches no frame, a frame has no
            image entry, an annotation names an unknown image or category, or a category name is not in
            ``class_names``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read COCO annotations ({exc})") from None
    sections = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in sections):
        raise SourceError(f"{path}: COCO json needs 'images', 'annotations' and 'categories' lists")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = {int(i["id"]): Path(str(i["file_name"])).name for i in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{path}: malformed category or image entry ({exc})") from None
    unknown_classes = sorted(set(categories.values()) - set(class_names))
    if unknown_classes:
        raise SourceError(f"{path}: unknown class name(s) {unknown_classes}; known: {', '.join(class_names)}")
    positions = {Path(name).name: position for position, name in enumerate(frame_names)}
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
