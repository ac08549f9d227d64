from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemel_engine import zoo
from gemel_engine.accuracy import Measurement
from gemel_engine.data.sampling import SamplingSpec
from gemel_engine.queries import Query, Task, evaluate
from gemel_engine.workload import (
    CameraSpec,
    QueryEntry,
    Workload,
    WorkloadError,
    camera_frames,
    query_data,
)

SYNTHETIC = "synthetic://cam?seed=3&width=64&height=48&fps=5&frames=120"
PRESENCE = Task("presence", ("car", "bus", "truck"))


def _workload(root: Path, *, labels: str = "ground_truth", weights: str | None = None) -> Workload:
    camera = CameraSpec("cam", SYNTHETIC, SamplingSpec(size=(32, 32)), labels=labels)
    entry = QueryEntry(Query("q", "cam", "resnet18", PRESENCE), weights=weights, unmerged_accuracy=0.9)
    return Workload("test", (camera,), (entry,), root)


def test_a_workload_round_trips_through_its_json_file(tmp_path: Path):
    zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "q.safetensors")
    workload = _workload(tmp_path, weights="q.safetensors")
    measured = dataclasses.replace(workload.queries[0], unmerged_test=Measurement(0.55, 0.5, 0.6, 300),
                                   chance_test=Measurement(0.52, 0.47, 0.57, 300),
                                   chance_lead=Measurement(0.03, -0.01, 0.07, 300))
    workload = workload.with_queries((measured,))
    loaded = Workload.load(workload.save(tmp_path / "workload.json"))
    assert loaded.to_json() == workload.to_json()
    assert loaded.query("q").required_accuracy == pytest.approx(0.855)
    assert loaded.query("q").chance_test == Measurement(0.52, 0.47, 0.57, 300)
    assert loaded.query("q").chance_lead == Measurement(0.03, -0.01, 0.07, 300)
    assert loaded.query("q").chance_shortfall.endswith("by 0.030 [-0.010, 0.070]: not clearly above 0")
    assert loaded.load_model(loaded.query("q")).fc.out_features == 2


def test_a_workload_that_references_missing_weights_names_the_query_and_the_file(tmp_path: Path):
    path = _workload(tmp_path, weights="weights/absent.safetensors").save(tmp_path / "workload.json")
    with pytest.raises(WorkloadError, match=r"query 'q': weights file .*absent\.safetensors not found"):
        Workload.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=3), "unsupported workload version 3"),
        (lambda d: d.update(format="x"), "not a gemel-workload"),
        (lambda d: d["queries"][0].update(camera="nowhere"), "unknown camera 'nowhere'"),
        (lambda d: d["queries"][0].update(arch="resnet19"), "unknown architecture 'resnet19'"),
        (lambda d: d["queries"].append(dict(d["queries"][0])), "repeated: q"),
        (lambda d: d["queries"][0]["task"].update(classes=["car", "zebra"]), "zebra"),
        (lambda d: d["cameras"][0].update(labels="psychic"), "labels must be one of"),
        (lambda d: d["cameras"][0].pop("source"), "missing field 'source'"),
    ],
)
def test_malformed_workloads_are_refused_with_a_clear_error(tmp_path: Path, edit, message):
    data = _workload(tmp_path).to_json()
    edit(data)
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(data))
    with pytest.raises(WorkloadError, match=message):
        Workload.load(path, check_weights=False)


def test_a_version_1_workload_is_refused_with_how_to_upgrade_it_and_measure_upgrades_it(tmp_path: Path):
    zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "q.safetensors")
    data = _workload(tmp_path, weights="q.safetensors").to_json()
    data["version"] = 1
    for camera in data["cameras"]:
        camera.pop("test_fraction")
    for query in data["queries"]:
        query.pop("unmerged_test"), query.pop("unmerged_val_interval")
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(data))
    with pytest.raises(WorkloadError, match=r"predates held-out test frames.*gemel_engine measure"):
        Workload.load(path)
    upgraded = Workload.load(path, upgrade=True)
    assert upgraded.cameras[0].test_fraction == 0.2
    assert upgraded.query("q").unmerged_accuracy is None  # measured on validation frames only: measured again


def test_ground_truth_labels_come_from_the_cameras_boxes_split_by_time(tmp_path: Path):
    workload = _workload(tmp_path)
    frames = camera_frames(workload, workload.cameras[0])
    labelled = query_data(workload, workload.queries[0], frames)
    gap = workload.cameras[0].gap_seconds
    assert frames.val.timestamps.min() >= frames.train.timestamps.max() + gap
    assert frames.test.timestamps.min() >= frames.val.timestamps.max() + gap
    assert len(labelled.train) == len(frames.train) and len(labelled.val) == len(frames.val)
    assert len(labelled.test) == len(frames.test) > 0
    assert set(labelled.train.targets) <= {0, 1}
    assert list(labelled.val.targets) == [PRESENCE.target(b) for b in frames.val.boxes]
    assert list(labelled.test.targets) == [PRESENCE.target(b) for b in frames.test.boxes]


def test_teacher_labels_give_the_unmerged_model_an_accuracy_of_one(tmp_path: Path):
    torch.manual_seed(0)
    zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "q.safetensors")
    workload = _workload(tmp_path, labels="teacher", weights="q.safetensors")
    entry = workload.queries[0]
    labelled = query_data(workload, entry, camera_frames(workload, workload.cameras[0]))
    for part in (labelled.val, labelled.test):
        assert evaluate(workload.load_model(entry), part.images, part.targets, PRESENCE) == 1.0


def test_an_image_folder_with_yolo_annotations_is_labelled_and_scaled(tmp_path: Path):
    frames_dir, labels_dir = tmp_path / "frames", tmp_path / "labels"
    frames_dir.mkdir()
    labels_dir.mkdir()
    for index in range(20):
        Image.fromarray(np.full((40, 80, 3), index * 10, np.uint8)).save(frames_dir / f"{index:04d}.png")
        if index % 2:
            (labels_dir / f"{index:04d}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels_dir / "classes.txt").write_text("car\nbus\ntruck\n")
    camera = CameraSpec(
        "folder", str(frames_dir), SamplingSpec(size=(40, 20)), labels="yolo", annotations="labels", fps=1.0,
        gap_seconds=1.0,
    )
    workload = Workload("w", (camera,), (QueryEntry(Query("q", "folder", "resnet18", PRESENCE)),), tmp_path)
    frames = camera_frames(workload, camera)
    boxes = [b for frame_boxes in (*frames.train.boxes, *frames.val.boxes, *frames.test.boxes) for b in frame_boxes]
    assert {(b.x1, b.y1, b.x2, b.y2) for b in boxes} == {(10.0, 5.0, 30.0, 15.0)}
    assert sorted(set(query_data(workload, workload.queries[0], frames).train.targets)) == [0, 1]


def test_annotations_that_do_not_match_the_frames_name_the_file(tmp_path: Path):
    frames_dir, labels_dir = tmp_path / "frames", tmp_path / "labels"
    frames_dir.mkdir()
    labels_dir.mkdir()
    for index in range(6):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames_dir / f"{index}.png")
    (labels_dir / "99.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    camera = CameraSpec("f", str(frames_dir), labels="yolo", annotations="labels", fps=1.0, gap_seconds=0)
    workload = Workload("w", (camera,), (QueryEntry(Query("q", "f", "resnet18", PRESENCE)),), tmp_path)
    with pytest.raises(Exception, match=r"99\.txt"):
        camera_frames(workload, camera)
