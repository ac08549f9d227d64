from __future__ import annotations

import numpy as np
import pytest
import torch

from gemel_engine import zoo
from gemel_engine.data.frames import Box
from gemel_engine.errors import UnknownArchitectureError
from gemel_engine.queries import (
    AccuracyTarget,
    Query,
    QueryError,
    Task,
    evaluate,
    predict,
    score,
    teacher_targets,
)

CAR = Box("car", 0, 0, 10, 10)
BUS = Box("bus", 5, 5, 25, 15)
SPECK = Box("car", 0, 0, 1, 1)


def test_presence_is_one_when_any_query_class_is_visible():
    task = Task("presence", ("car", "truck"))
    assert task.target([CAR]) == 1
    assert task.target([BUS]) == 0
    assert task.target([]) == 0


def test_boxes_below_the_minimum_area_are_ignored():
    assert Task("presence", ("car",), min_box_area=4).target([SPECK]) == 0


def test_count_bins_follow_the_edges():
    task = Task("count", ("car", "bus"), count_edges=(1, 3))
    assert task.output_names == ("0", "1-2", "3+")
    assert [task.target([CAR] * n) for n in range(5)] == [0, 1, 1, 2, 2]
    assert task.num_outputs == 3


def test_type_is_the_class_of_the_largest_object_in_view_or_none():
    task = Task("type", ("car", "bus", "truck", "person", "bicycle"), min_box_area=4)
    assert task.num_outputs == 6 and task.output_names == ("none", "car", "bus", "truck", "person", "bicycle")
    assert task.target([]) == 0
    assert task.target([Box("truck", 0, 0, 1, 1)]) == 0  # too small to count
    assert task.target([Box("car", 0, 0, 4, 4), Box("bus", 0, 0, 6, 5), Box("person", 0, 0, 3, 3)]) == 2
    assert Task("type", ("car", "bus")).target([Box("truck", 0, 0, 9, 9), Box("bus", 0, 0, 3, 3)]) == 2


def test_detection_targets_number_classes_from_one_after_the_background():
    task = Task("detection", ("bus", "car"))
    target = task.target([CAR, BUS, Box("person", 0, 0, 5, 5)])
    assert target["labels"].tolist() == [2, 1]
    assert target["boxes"].tolist() == [[0, 0, 10, 10], [5, 5, 25, 15]]
    assert task.num_outputs == 3 and task.output_names == ("background", "bus", "car")


def test_an_empty_detection_frame_has_a_well_formed_empty_target():
    target = Task("detection", ("car",)).target([])
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_unknown_class_names_are_named():
    with pytest.raises(QueryError, match=r"unknown class name\(s\) \['zebra'\]"):
        Task("presence", ("car", "zebra"))
    with pytest.raises(QueryError, match="labels use unknown class name"):
        Task("presence", ("car",)).target([Box("ufo", 0, 0, 3, 3)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "segment", "classes": ("car",)},
        {"kind": "presence", "classes": ()},
        {"kind": "presence", "classes": ("car", "car")},
        {"kind": "count", "classes": ("car",), "count_edges": (3, 1)},
        {"kind": "count", "classes": ("car",), "count_edges": (0,)},
        {"kind": "presence", "classes": ("car",), "min_box_area": -1},
    ],
)
def test_malformed_tasks_are_refused(kwargs):
    with pytest.raises(QueryError):
        Task(**kwargs)


def test_a_task_round_trips_through_json():
    task = Task("count", ("car", "bus"), count_edges=(1, 2), min_box_area=9)
    assert Task.from_json(task.to_json()) == task


def test_a_query_needs_an_architecture_that_fits_its_task():
    with pytest.raises(QueryError, match="needs a detection architecture"):
        Query("q", "cam", "resnet18", Task("detection", ("car",)))
    with pytest.raises(QueryError, match="needs a classification architecture"):
        Query("q", "cam", "ssd300_vgg16", Task("presence", ("car",)))
    with pytest.raises(UnknownArchitectureError):
        Query("q", "cam", "resnet19", Task("presence", ("car",)))
    with pytest.raises(QueryError, match="query name"):
        Query("bad name", "cam", "resnet18", Task("presence", ("car",)))


def test_the_zoo_builds_the_head_the_task_needs():
    query = Query("q", "cam", "resnet18", Task("count", ("car",), count_edges=(1, 2, 4)))
    assert query.build_model(device="meta").fc.out_features == 4


def test_accuracy_targets_are_relative_or_absolute():
    assert AccuracyTarget().required(0.9) == pytest.approx(0.855)
    assert AccuracyTarget(relative=None, absolute=0.7).required(0.9) == 0.7
    assert AccuracyTarget.from_json({"absolute": 0.5}).absolute == 0.5
    for bad in ({"relative": 0.9, "absolute": 0.5}, {}, {"relative": 1.5}, {"nonsense": 1}):
        with pytest.raises(QueryError):
            AccuracyTarget.from_json(bad)


def test_top1_accuracy_counts_matches():
    assert score([0, 1, 1, 0], [0, 1, 0, 0], Task("presence", ("car",))) == 0.75
    with pytest.raises(QueryError, match="cannot score"):
        score([0], [0, 1], Task("presence", ("car",)))


def test_map50_is_one_for_exact_boxes_and_zero_for_misplaced_ones():
    task = Task("detection", ("car",))
    truth = [task.target([Box("car", 0, 0, 10, 10)]), task.target([Box("car", 20, 20, 30, 30)])]
    exact = [{**t, "scores": torch.ones(len(t["labels"]))} for t in truth]
    moved = [{**t, "boxes": t["boxes"] + 50} for t in exact]
    assert score(exact, truth, task) == pytest.approx(1.0)
    assert score(moved, truth, task) == pytest.approx(0.0)


def test_teacher_labels_reproduce_the_teachers_accuracy_of_one_on_itself():
    torch.manual_seed(0)
    task = Task("count", ("car",), count_edges=(1, 2))
    teacher = zoo.get_model("resnet18", num_classes=task.num_outputs).eval()
    images = np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    labels = teacher_targets(predict(teacher, images, task), task)
    assert evaluate(teacher, images, labels, task) == 1.0


def test_detection_teacher_labels_keep_only_confident_boxes():
    task = Task("detection", ("car",))
    prediction = {
        "boxes": torch.tensor([[0, 0, 5, 5], [1, 1, 4, 4.0]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.9, 0.2]),
    }
    [label] = teacher_targets([prediction], task, score_threshold=0.5)
    assert label["boxes"].tolist() == [[0, 0, 5, 5]]
