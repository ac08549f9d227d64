"""A camera's class vocabulary: read from its annotations (YOLO classes.txt / data.yaml, COCO categories),
COCO's 80 classes for YOLO labels that name none, and an error, never a remap, for anything outside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemel_engine.data.annotations import COCO_CLASSES, annotation_vocabulary
from gemel_engine.data.sampling import SamplingSpec
from gemel_engine.errors import SourceError
from gemel_engine.queries import Query, QueryError, Task
from gemel_engine.train import TrainArgs, fit, setup
from gemel_engine.workload import (
    CameraSpec,
    QueryEntry,
    Workload,
    WorkloadError,
    camera_frames,
    check_annotations,
    query_data,
)

PERSON = Task("presence", ("person",), min_box_area=0.0, vocabulary=COCO_CLASSES)


def _street(root: Path, frames: int = 40) -> tuple[Path, Path]:
    """Frames where every odd one shows a bright 'person' square, with YOLO labels that say so as class 0."""
    frames_dir, labels_dir = root / "frames", root / "labels"
    frames_dir.mkdir()
    labels_dir.mkdir()
    for index in range(frames):
        image = np.full((32, 32, 3), 40, np.uint8)
        if index % 2:
            image[8:24, 8:24] = 230
            (labels_dir / f"{index:04d}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
        Image.fromarray(image).save(frames_dir / f"{index:04d}.png")
    return frames_dir, labels_dir


def _camera(frames_dir: Path, **options) -> CameraSpec:
    return CameraSpec("street", str(frames_dir), SamplingSpec(size=(32, 32)), labels="yolo", annotations="labels",
                      fps=1.0, gap_seconds=0.0, **options)


def _workload(root: Path, camera: CameraSpec, task: Task = PERSON) -> Workload:
    return Workload("w", (camera,), (QueryEntry(Query("people", "street", "resnet18", task)),), root)


def test_person_0_yolo_labels_with_classes_txt_train_a_person_query(tmp_path: Path):
    frames_dir, labels_dir = _street(tmp_path)
    (labels_dir / "classes.txt").write_text("person\ncar\n")
    workload = _workload(tmp_path, _camera(frames_dir), Task("presence", ("person",), min_box_area=0.0))
    entry = workload.queries[0]
    assert entry.query.task.vocabulary == ("person", "car")
    assert workload.vocabulary("street").source == str(labels_dir / "classes.txt")
    frames = camera_frames(workload, workload.cameras[0])
    labelled = query_data(workload, entry, frames)
    for part, boxes in ((labelled.train, frames.train.boxes), (labelled.test, frames.test.boxes)):
        assert list(part.targets) == [int(bool(b)) for b in boxes] and 0 < sum(part.targets) < len(part)
    torch.manual_seed(0)
    args = TrainArgs(steps=12, batch_size=8, lr=3e-3, augment=False, device="cpu")
    model = fit(setup(entry.query, args), labelled.train, entry.query.task, args).model
    with torch.no_grad():
        images = torch.from_numpy(np.stack(labelled.test.images)).permute(0, 3, 1, 2).float() / 255
        predicted = model(images).argmax(1).tolist()
    commonest = max(set(labelled.train.targets), key=list(labelled.train.targets).count)
    chance = sum(t == commonest for t in labelled.test.targets) / len(labelled.test)
    accuracy = sum(p == t for p, t in zip(predicted, labelled.test.targets, strict=True)) / len(labelled.test)
    assert accuracy > chance


def test_yolo_labels_that_name_no_classes_read_ids_as_coco_classes(tmp_path: Path):
    frames_dir, _ = _street(tmp_path, frames=10)
    workload = _workload(tmp_path, _camera(frames_dir), Task("presence", ("person",)))
    assert workload.queries[0].query.task.vocabulary == COCO_CLASSES
    assert "COCO's 80 classes" in workload.vocabulary("street").source
    frames = camera_frames(workload, workload.cameras[0])
    assert {b.label for boxes in frames.train.boxes for b in boxes} == {"person"}


def test_a_class_id_outside_the_vocabulary_is_an_error_not_a_remap(tmp_path: Path):
    frames_dir, labels_dir = _street(tmp_path, frames=10)
    (labels_dir / "classes.txt").write_text("person\n")
    (labels_dir / "0001.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    workload = _workload(tmp_path, _camera(frames_dir))
    with pytest.raises(SourceError, match=r"0001\.txt:1: class id 1 is outside the 1 known classes"):
        camera_frames(workload, workload.cameras[0])


def test_a_query_class_outside_the_camera_vocabulary_names_where_the_vocabulary_came_from(tmp_path: Path):
    frames_dir, labels_dir = _street(tmp_path, frames=4)
    (labels_dir / "classes.txt").write_text("person\n")
    with pytest.raises(WorkloadError, match=r"unknown class name\(s\) \['car'\].*classes\.txt"):
        _workload(tmp_path, _camera(frames_dir), Task("presence", ("car",)))


def test_data_yaml_names_as_a_map_or_a_list_in_the_dataset_folder(tmp_path: Path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (tmp_path / "data.yaml").write_text("path: .\nnc: 2\nnames:\n  0: pedestrian\n  1: 'traffic light'\n")
    found = annotation_vocabulary(labels, "yolo")
    assert found is not None and found.names == ("pedestrian", "traffic light")
    (tmp_path / "data.yaml").write_text("names: [pedestrian, van]\n")
    assert annotation_vocabulary(labels, "yolo").names == ("pedestrian", "van")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"classes.txt": "person\n\ncar\n"}, r"classes\.txt:2: blank line"),
        ({"classes.txt": "person\nperson\n"}, "more than once: person"),
        ({"data.yaml": "nc: 3\nnames: [a, b]\n"}, "'nc' is 3 but 'names' lists 2"),
        ({"data.yaml": "names:\n  0: a\n  2: b\n"}, "must map the ids 0 to 1"),
        ({"data.yaml": "names: [a, {b: c}]\n"}, "class 1 must be a name"),
        ({"data.yaml": "names: [a\n"}, "not valid YAML"),
        ({"data.yaml": "!!python/object/apply:os.system ['true']\n"}, "not valid YAML"),
        ({"classes.txt": "a\nb\n", "data.yaml": "names: [a, c]\n"}, "name different classes"),
    ],
)
def test_malformed_or_disagreeing_name_files_are_refused(tmp_path: Path, files: dict[str, str], message: str):
    labels = tmp_path / "labels"
    labels.mkdir()
    for name, text in files.items():
        (labels / name).write_text(text)
    with pytest.raises(SourceError, match=message):
        annotation_vocabulary(labels, "yolo")


def test_coco_categories_are_the_vocabulary_and_a_declared_one_must_agree(tmp_path: Path):
    frames_dir, _ = _street(tmp_path, frames=4)
    coco = {"images": [{"id": i, "file_name": f"{i:04d}.png"} for i in range(4)],
            "annotations": [{"image_id": 1, "category_id": 24, "bbox": [8, 8, 16, 16]}],
            "categories": [{"id": 24, "name": "zebra"}, {"id": 1, "name": "person"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    camera = CameraSpec("street", str(frames_dir), labels="coco", annotations="coco.json", fps=1.0, gap_seconds=0)
    workload = _workload(tmp_path, camera, Task("presence", ("zebra",), vocabulary=COCO_CLASSES))
    assert workload.queries[0].query.task.vocabulary == ("person", "zebra")
    (tmp_path / "workload.json").write_text(json.dumps({**workload.to_json(), "queries": [
        {**q, "task": {k: v for k, v in q["task"].items() if k != "vocabulary"}} for q in workload.to_json()["queries"]
    ]}))
    loaded = Workload.load(tmp_path / "workload.json", check_weights=False)
    assert loaded.queries[0].query.task.vocabulary == ("person", "zebra")
    with pytest.raises(WorkloadError, match="disagrees with the classes"):
        _workload(tmp_path, CameraSpec("street", str(frames_dir), labels="coco", annotations="coco.json",
                                       vocabulary=("person", "car")), Task("presence", ("person",)))


def test_a_declared_vocabulary_round_trips_and_coco_is_spelled_by_name(tmp_path: Path):
    frames_dir, _ = _street(tmp_path, frames=4)
    workload = _workload(tmp_path, _camera(frames_dir, vocabulary=COCO_CLASSES), Task("presence", ("bus",)))
    data = workload.to_json()
    assert data["cameras"][0]["vocabulary"] == "coco"
    (tmp_path / "workload.json").write_text(json.dumps(data))
    loaded = Workload.load(tmp_path / "workload.json", check_weights=False)
    assert loaded.cameras[0].vocabulary == COCO_CLASSES
    assert Task.from_json(loaded.queries[0].query.task.to_json()).vocabulary == COCO_CLASSES
    data["cameras"][0]["vocabulary"] = 7
    (tmp_path / "workload.json").write_text(json.dumps(data))
    with pytest.raises(WorkloadError, match="vocabulary must be"):
        Workload.load(tmp_path / "workload.json", check_weights=False)


@pytest.mark.parametrize(
    "vocabulary",
    [(), ("a", "a"), ("a", " b"), ("x" * 65,), tuple(f"c{i}" for i in range(1001)), "person"],
)
def test_a_vocabulary_is_bounded_and_checked(vocabulary):
    with pytest.raises(QueryError):
        Task("presence", ("a",), vocabulary=vocabulary)


def test_annotations_are_checked_against_every_frame_of_the_folder(tmp_path: Path):
    frames_dir, labels_dir = _street(tmp_path, frames=6)
    (labels_dir / "classes.txt").write_text("person\n")
    camera = _camera(frames_dir)
    found = check_annotations(camera, tmp_path)
    assert found.names == ("person",) and found.source.endswith("classes.txt")
    (labels_dir / "0009.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(SourceError, match=r"label files match no frame: 0009\.txt"):
        check_annotations(camera, tmp_path)
    with pytest.raises(WorkloadError, match="not labelled by annotations"):
        check_annotations(CameraSpec("street", str(frames_dir), fps=1.0), tmp_path)


def _street_video(root: Path, frames: int = 40) -> Path:
    """The street of ``_street`` as a video file (lossless enough for a bright square on a dark street)."""
    from gemel_engine.data.video import write_video

    (root / "images").mkdir()
    frames_dir, _ = _street(root / "images", frames)
    images = [np.asarray(Image.open(frames_dir / f"{index:04d}.png").convert("RGB")) for index in range(frames)]
    path = root / "street.mkv"
    write_video(images, path, fps=1.0, codec="mjpeg")
    return path


def test_a_video_files_frames_take_yolo_labels_named_as_cvat_exports_them(tmp_path: Path):
    video = _street_video(tmp_path, frames=12)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for index in range(1, 12, 2):  # the bright square shows on every odd frame
        (labels_dir / f"frame_{index:06d}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels_dir / "classes.txt").write_text("person\n")
    camera = _camera(video)
    assert check_annotations(camera, tmp_path).names == ("person",)
    workload = _workload(tmp_path, camera, Task("presence", ("person",), min_box_area=0.0, vocabulary=("person",)))
    frames = camera_frames(workload, camera)
    for part in (frames.train, frames.val, frames.test):
        assert [bool(boxes) for boxes in part.boxes] == [bool(int(i) % 2) for i in part.indices]
        assert all(image[16, 16].mean() > 128 for image, boxes in zip(part.images, part.boxes, strict=True) if boxes)
    (labels_dir / "frame_000012.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # the video has frames 0..11
    with pytest.raises(SourceError, match=r"match no frame: frame_000012\.txt"):
        check_annotations(camera, tmp_path)


def test_a_video_files_frames_take_coco_annotations_matched_without_the_extension(tmp_path: Path):
    video = _street_video(tmp_path, frames=6)
    images = [{"id": index + 1, "file_name": f"frame_{index:06d}.PNG", "width": 32, "height": 32}
              for index in range(6)]
    annotations = [{"id": index, "image_id": index + 1, "category_id": 7, "bbox": [8, 8, 16, 16]}
                   for index in (1, 3, 5)]
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "person"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    camera = CameraSpec("street", str(video), SamplingSpec(size=(32, 32)), labels="coco", annotations="coco.json",
                        fps=1.0, gap_seconds=0.0)
    assert check_annotations(camera, tmp_path).names == ("person",)
    coco["images"] = images[:5]
    coco["annotations"] = annotations[:2]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(SourceError, match="frames without an image entry: frame_000005"):
        check_annotations(camera, tmp_path)
