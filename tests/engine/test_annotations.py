from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemel_engine.data.annotations import read_coco_annotations, read_yolo_labels
from gemel_engine.errors import SourceError

CLASSES = ("car", "bus", "truck", "person", "bicycle")
FRAMES = ["0001.png", "0002.png"]
SIZES = [(100, 50), (100, 50)]


def _yolo(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "labels"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_yolo_labels_become_pixel_boxes_and_absent_files_mean_no_objects(tmp_path: Path):
    folder = _yolo(tmp_path, {"0001.txt": "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n"})
    boxes = read_yolo_labels(folder, FRAMES, SIZES, CLASSES)
    bus, car = boxes[0]
    assert (bus.label, bus.x1, bus.y1, bus.x2, bus.y2) == ("bus", 40.0, 15.0, 60.0, 35.0)
    assert (car.label, car.x1, car.y1) == ("car", 0.0, 0.0)
    assert boxes[1] == ()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0003.txt": "0 0.5 0.5 0.1 0.1"}, "match no frame: 0003.txt"),
        ({"0001.txt": "9 0.5 0.5 0.1 0.1"}, "class id 9 is outside"),
        ({"0001.txt": "0 0.5 0.5"}, r"0001\.txt:1: expected 'class_id cx cy w h'"),
        ({"0001.txt": "0 0.5 0.5 0 0.1"}, "no area"),
    ],
)
def test_yolo_labels_that_do_not_match_the_frames_are_refused(tmp_path: Path, files, message):
    with pytest.raises(SourceError, match=message):
        read_yolo_labels(_yolo(tmp_path, files), FRAMES, SIZES, CLASSES)


def test_a_missing_yolo_folder_is_named(tmp_path: Path):
    with pytest.raises(SourceError, match="label folder not found"):
        read_yolo_labels(tmp_path / "nope", FRAMES, SIZES, CLASSES)


def _coco(tmp_path: Path, **overrides) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "frames/0001.png"}, {"id": 2, "file_name": "0002.png"}],
        "annotations": [{"image_id": 2, "category_id": 7, "bbox": [10, 5, 20, 10]}],
        "categories": [{"id": 7, "name": "truck"}],
    }
    data.update(overrides)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_annotations_are_matched_to_frames_by_file_name(tmp_path: Path):
    boxes = read_coco_annotations(_coco(tmp_path), FRAMES, SIZES, CLASSES)
    assert boxes[0] == ()
    [truck] = boxes[1]
    assert (truck.label, truck.x1, truck.y1, truck.x2, truck.y2) == ("truck", 10.0, 5.0, 30.0, 15.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"images": [{"id": 1, "file_name": "0001.png"}]}, r"frames without an image entry: 0002\.png"),
        (
            {"images": [{"id": 1, "file_name": "0001.png"}, {"id": 2, "file_name": "0002.png"},
                        {"id": 3, "file_name": "0009.png"}]},
            r"match no frame: 0009\.png",
        ),
        ({"categories": [{"id": 7, "name": "zebra"}]}, r"unknown class name\(s\) \['zebra'\]"),
        ({"annotations": [{"image_id": 5, "category_id": 7, "bbox": [0, 0, 1, 1]}]}, "unknown image id 5"),
        ({"annotations": [{"image_id": 1, "category_id": 8, "bbox": [0, 0, 1, 1]}]}, "unknown category id 8"),
        ({"annotations": [{"image_id": 1}]}, "is malformed"),
        ({"images": "nope"}, "needs 'images'"),
    ],
)
def test_coco_annotations_that_do_not_match_are_refused(tmp_path: Path, overrides, message):
    with pytest.raises(SourceError, match=message):
        read_coco_annotations(_coco(tmp_path, **overrides), FRAMES, SIZES, CLASSES)


def test_a_coco_file_that_is_not_json_is_named(tmp_path: Path):
    path = tmp_path / "coco.json"
    path.write_text("{")
    with pytest.raises(SourceError, match="cannot read COCO annotations"):
        read_coco_annotations(path, FRAMES, SIZES, CLASSES)
