"""A teacher detector labels a camera's frames for every query on it: the labels come from its detections (read
here by running it directly), not from each query's own model; they are computed once and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemel_engine import zoo
from gemel_engine.data.sampling import SamplingSpec
from gemel_engine.errors import WeightsError
from gemel_engine.queries import Query, Task, images_to_tensor
from gemel_engine.teacher import COCO_DETECTION_LABELS, TeacherError, TeacherSpec
from gemel_engine.workload import CameraSpec, QueryEntry, Workload, camera_frames, query_data

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
LABELS = ("person", "car")


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """A folder of 30 frames (64×64) with the weights of an untrained detector whose every proposal scores as a
    person (label id 1) and of a classifier biased to answer 'absent' everywhere, saved as an operator's files."""
    root = tmp_path_factory.mktemp("teacher")
    (root / "frames").mkdir()
    generator = np.random.default_rng(0)
    for index in range(30):
        image = generator.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        image[16:48, 20 + index % 8:44 + index % 8] = 220
        Image.fromarray(image).save(root / "frames" / f"{index:04d}.png")
    torch.manual_seed(0)
    teacher = zoo.get_model(ARCH, num_classes=len(LABELS) + 1)
    with torch.no_grad():
        teacher.roi_heads.box_predictor.cls_score.weight.zero_()
        teacher.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-10.0, 10.0, -10.0]))
    zoo.save_weights(teacher, root / "teacher.safetensors")
    own = Query("people", "street", "resnet18", Task("presence", ("person",), vocabulary=LABELS)).build_model()
    with torch.no_grad():
        own.fc.bias.copy_(torch.tensor([100.0, -100.0]))  # always 'absent'
    zoo.save_weights(own, root / "own.safetensors")
    return root


def _workload(root: Path, teacher: TeacherSpec | None) -> Workload:
    camera = CameraSpec("street", str(root / "frames"), SamplingSpec(size=(32, 32)), labels="teacher", fps=1.0,
                        gap_seconds=0.0, teacher=teacher)
    query = Query("people", "street", "resnet18", Task("presence", ("person",), min_box_area=0.0,
                                                       vocabulary=teacher.vocabulary if teacher else LABELS))
    return Workload("w", (camera,), (QueryEntry(query, weights="own.safetensors"),), root)


def _teacher(**options) -> TeacherSpec:
    return TeacherSpec(ARCH, "teacher.safetensors", LABELS, score_threshold=0.0, frame_size=(64, 64), **options)


def test_a_teacher_cameras_labels_come_from_the_teacher_not_the_querys_own_model(street: Path):
    workload = _workload(street, _teacher())
    entry = workload.queries[0]
    frames = camera_frames(workload, workload.cameras[0])
    labelled = query_data(workload, entry, frames)

    teacher = zoo.load_weights(zoo.get_model(ARCH, num_classes=3), street / "teacher.safetensors").eval()
    for part, frame_set in ((labelled.train, frames.train), (labelled.test, frames.test)):
        large = [np.asarray(Image.open(street / "frames" / f"{int(i):04d}.png").convert("RGB").resize((64, 64)))
                 for i in frame_set.indices]
        with torch.no_grad():
            seen = teacher(list(images_to_tensor(np.stack(large))))
        expected = [int(bool((result["labels"] == 1).any())) for result in seen]  # label id 1 names 'person'
        assert list(part.targets) == expected
        assert all(box.x2 <= 32 and box.y2 <= 32 for boxes in frame_set.boxes for box in boxes)  # scaled to 32×32
    assert sum(labelled.train.targets) > 0  # the own model answers 'absent' everywhere: these are not its labels

    own = _workload(street, None)
    own_labels = query_data(own, own.queries[0], camera_frames(own, own.cameras[0]))
    assert set(own_labels.train.targets) == {0} and list(own_labels.train.targets) != list(labelled.train.targets)


def test_a_teachers_labels_are_cached_per_teacher_and_threshold(street: Path, monkeypatch):
    workload = _workload(street, _teacher())
    first = camera_frames(workload, workload.cameras[0])
    stored = sorted((street / "cache").glob("teacher-*.json"))
    assert stored

    def no_build(self, root):
        raise AssertionError("the teacher ran again although its labels were cached")

    monkeypatch.setattr(TeacherSpec, "build", no_build)
    again = camera_frames(workload, workload.cameras[0])
    assert again.train.boxes == first.train.boxes
    monkeypatch.undo()
    stricter = _workload(street, TeacherSpec(ARCH, "teacher.safetensors", LABELS, score_threshold=0.99,
                                             frame_size=(64, 64)))
    fewer = camera_frames(stricter, stricter.cameras[0])
    assert sum(map(len, fewer.train.boxes)) <= sum(map(len, first.train.boxes))
    assert len(list((street / "cache").glob("teacher-*.json"))) == len(stored) + 1


def test_a_teacher_must_be_a_detector_whose_labels_fit_its_weights(street: Path):
    with pytest.raises(TeacherError, match="a teacher must be a detection model"):
        TeacherSpec("resnet18", "own.safetensors", LABELS)
    with pytest.raises(TeacherError, match="score_threshold must be in"):
        TeacherSpec(ARCH, "teacher.safetensors", LABELS, score_threshold=float("nan"))
    with pytest.raises(TeacherError, match="name the class"):
        TeacherSpec(ARCH, "teacher.safetensors", ("", ""))
    wrong = TeacherSpec(ARCH, "teacher.safetensors", ("person", "car", "bus"))  # 4 outputs against 3 in the file
    with pytest.raises(WeightsError):
        wrong.build(street)


def test_a_teacher_round_trips_through_the_workload_file_and_coco_is_spelled_by_name(street: Path):
    coco = TeacherSpec("fasterrcnn_resnet50_fpn", "coco.safetensors", COCO_DETECTION_LABELS)
    assert coco.to_json()["labels"] == "coco" and TeacherSpec.from_json(coco.to_json()) == coco
    assert coco.vocabulary[:3] == ("person", "bicycle", "car") and len(coco.vocabulary) == 80
    workload = _workload(street, _teacher())
    path = workload.save(street / "workload.json")
    loaded = Workload.load(path)
    assert loaded.cameras[0].teacher == workload.cameras[0].teacher
    assert loaded.vocabulary("street").names == LABELS
