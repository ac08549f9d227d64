"""A teacher detector named for a camera: checked against its weights before anything is kept, its classes become
the camera's vocabulary, and the engine labels every query on the camera from its boxes."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from gemel_engine.teacher import TeacherSpec
from tests.webapp.test_workloads_factories import make_camera, make_model, make_query
from webapp.workloads.engine import live_workload
from webapp.workloads.models import Camera, ModelEntry

pytestmark = pytest.mark.django_db

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _post(client, camera: Camera, body: dict):
    return client.post(f"/api/cameras/{camera.pk}/teacher", data=json.dumps(body), content_type="application/json")


def test_a_teacher_labels_the_camera_and_the_engine_labels_its_queries_from_it(operator_client):
    camera = make_camera()
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    query = make_query("people", camera=camera, task={"kind": "presence", "classes": ["person"]},
                       status="pending")
    response = _post(operator_client, camera, {"model": teacher.pk, "labels": ["person", "car"],
                                               "score_threshold": 0.3, "frame_size": [128, 128]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["labels"], body["classes"], body["teacher"]) == ("teacher", ["person", "car"], teacher.pk)
    camera.refresh_from_db()
    assert camera.vocabulary_source == "teacher model big_detector"
    spec = live_workload([query]).cameras[0].teacher
    assert isinstance(spec, TeacherSpec)
    assert (spec.arch, spec.labels, spec.score_threshold, spec.frame_size) == (DETECTOR, ("person", "car"), 0.3,
                                                                               (128, 128))
    assert live_workload([query]).queries[0].query.task.vocabulary == ("person", "car")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"labels": ["person", "car", "bus"]}, "has 3 outputs (background and 2 label ids) but 3 class names"),
        ({"labels": ["", ""]}, "name the class of its label ids"),
        ({"labels": "many"}, "labels"),
        ({"labels": ["person", "car"], "score_threshold": 2}, "less than or equal to 1"),
        ({"labels": ["person", "car"], "frame_size": [8, 8]}, "greater than or equal to 16"),
        ({"labels": ["person", "car"], "frame_size": [64]}, "at least 2 items"),
    ],
)
def test_a_teacher_that_does_not_fit_is_refused_naming_why_and_keeping_the_camera(operator_client, body, message):
    camera = make_camera()
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    response = _post(operator_client, camera, {"model": teacher.pk, **body})
    assert response.status_code in (400, 422) and message in response.content.decode(), response.content
    camera.refresh_from_db()
    assert (camera.labels, camera.teacher_id, camera.vocabulary) == ("", None, [])


def test_a_classifier_cannot_teach_and_a_query_the_labels_would_break_is_named(operator_client):
    camera = make_camera()
    classifier = make_model("small")
    response = _post(operator_client, camera, {"model": classifier.pk, "labels": ["person"]})
    assert response.status_code == 400 and "a teacher must be a detector" in response.json()["detail"]
    make_query("buses", camera=camera, task={"kind": "presence", "classes": ["bus"]})
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    response = _post(operator_client, camera, {"model": teacher.pk, "labels": ["person", "car"]})
    assert response.status_code == 400 and "query 'buses' would break" in response.json()["detail"]


def test_the_teacher_form_offers_only_detectors_and_the_cameras_page_names_the_teacher(operator_client):
    camera = make_camera()
    make_model("small")
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    page = operator_client.get(reverse("camera_teacher", args=[camera.pk])).content.decode()
    assert "big_detector" in page and "small" not in page
    response = operator_client.post(reverse("camera_teacher", args=[camera.pk]), {
        "model": teacher.pk, "labels": "person, car", "score_threshold": 0.5, "frame_width": 96})
    assert response.status_code == 400 and "give both the width and the height" in response.content.decode()
    response = operator_client.post(reverse("camera_teacher", args=[camera.pk]), {
        "model": teacher.pk, "labels": "person, car", "score_threshold": 0.5})
    assert response.status_code == 302
    page = operator_client.get(reverse("cameras")).content.decode()
    assert "teacher model big_detector: 2 classes" in page


def test_a_model_that_teaches_a_camera_is_not_deleted(operator_client):
    camera = make_camera()
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    assert _post(operator_client, camera, {"model": teacher.pk, "labels": ["person", "car"]}).status_code == 200
    response = operator_client.post(reverse("model_delete", args=[teacher.pk]))
    assert response.status_code == 200 and "labels cameras north as their teacher" in response.content.decode()
    assert ModelEntry.objects.filter(pk=teacher.pk).exists()


def test_a_viewer_cannot_name_a_teacher(viewer_client):
    camera = make_camera()
    teacher = make_model("big_detector", arch=DETECTOR, num_classes=3)
    assert _post(viewer_client, camera, {"model": teacher.pk, "labels": ["person", "car"]}).status_code == 403
