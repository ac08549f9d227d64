"""Training an unmerged model from the dashboard: a labelled camera's frames become a model and its query."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from tests.webapp.test_workloads_annotations import _folder_camera, _upload, _zip
from tests.webapp.test_workloads_factories import TINY_ARCH, make_camera, make_query
from webapp.workloads.models import ModelEntry, Query, TrainingRun
from webapp.workloads.services import training_run, training_start

pytestmark = pytest.mark.django_db

PERSON = {"kind": "presence", "classes": ["person"]}


def test_a_run_on_an_annotated_camera_becomes_a_model_and_a_query_waiting_to_be_measured(operator_client, settings):
    camera = _folder_camera(settings, frames=40)
    labels = {f"{index:04d}.txt": "0 0.5 0.5 0.5 0.5\n" for index in range(1, 40, 2)}
    _upload(operator_client, camera, _zip({**labels, "classes.txt": "person\n"}))
    response = operator_client.post(reverse("training_create"), {
        "name": "people", "camera": camera.pk, "arch": TINY_ARCH, "kind": "presence", "classes": ["person"],
        "steps": 3, "target_fraction": 0.95, "slo_ms": 500,
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    run = TrainingRun.objects.get(name="people")
    assert (run.status, run.steps) == (TrainingRun.Status.QUEUED, 3)
    run = training_run(run_id=run.pk)
    assert run is not None and run.status == TrainingRun.Status.SUCCEEDED, run.detail
    assert run.steps_done == 3 and "held-out test accuracy" in run.detail
    model = ModelEntry.objects.get(name="people")
    assert (model.arch, model.builder_args, model.weights_size > 0) == (TINY_ARCH, {"num_classes": 2}, True)
    query = Query.objects.get(name="people")
    assert (query.camera, query.model, query.status, run.query) == (camera, model, Query.Status.PENDING, query)
    assert not (settings.MEDIA_ROOT / "training" / f"run-{run.pk}.safetensors").exists()
    assert training_run(run_id=run.pk) is None  # claimed once
    page = operator_client.get(reverse("cameras")).content.decode()
    assert 'id="training-table"' in page and "3 / 3" in page


def test_a_camera_without_labels_a_taken_name_and_too_many_steps_are_refused(settings):
    unlabelled = _folder_camera(settings)
    with pytest.raises(ValidationError, match="no labels to train on: upload YOLO or COCO annotations"):
        training_start(name="people", camera=unlabelled, arch=TINY_ARCH, task=PERSON)
    synthetic = make_camera()
    make_query("taken", camera=synthetic)
    with pytest.raises(ValidationError, match="already"):
        training_start(name="taken", camera=synthetic, arch=TINY_ARCH, task=PERSON)
    with pytest.raises(ValidationError, match=r"steps must be an integer in \[1, 5000\]"):
        training_start(name="cars", camera=synthetic, arch=TINY_ARCH, task=PERSON, steps=10_000)
    with pytest.raises(ValidationError, match="detection model"):
        training_start(name="boxes", camera=synthetic, arch=TINY_ARCH, task={"kind": "detection", "classes": ["car"]})
    assert not TrainingRun.objects.exists()


def test_a_camera_with_too_few_frames_fails_saying_so(operator_client, settings):
    camera = _folder_camera(settings)
    response = _upload(operator_client, camera, _zip({"0001.txt": "0 0.5 0.5 0.5 0.5\n", "classes.txt": "person\n"}))
    assert response.status_code == 302, response.content.decode()[-3000:]
    camera.refresh_from_db()
    run = training_run(run_id=training_start(name="people", camera=camera, arch=TINY_ARCH, task=PERSON).pk)
    assert run is not None and run.status == TrainingRun.Status.FAILED
    assert "training frame(s); training needs at least 8" in run.detail


def test_a_run_whose_worker_died_is_taken_over_and_a_live_one_is_left_alone(settings):
    from django.utils import timezone

    from webapp.workloads.services.training import TRAINING_STALE

    run = training_start(name="cars", camera=make_camera(), arch=TINY_ARCH, task=PERSON, steps=2)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.TRAINING)
    assert training_run(run_id=run.pk) is None  # its worker is still writing progress
    TrainingRun.objects.filter(pk=run.pk).update(updated_at=timezone.now() - TRAINING_STALE * 2)
    run = training_run(run_id=run.pk)
    assert run is not None
    assert run.status == TrainingRun.Status.SUCCEEDED, run.detail


def test_a_run_that_fails_says_why(settings):
    run = training_start(name="cars", camera=make_camera(), arch=TINY_ARCH, task=PERSON, steps=2)
    TrainingRun.objects.filter(pk=run.pk).update(arch="resnet18", task={"kind": "presence", "classes": ["nope"]})
    run = training_run(run_id=run.pk)
    assert run is not None and run.status == TrainingRun.Status.FAILED
    assert run.detail.startswith("training failed: unknown class name(s) ['nope']")


def test_the_api_starts_lists_and_refuses_training_runs(operator_client):
    camera = make_camera()
    body = {"name": "cars", "camera": camera.pk, "arch": TINY_ARCH, "task": PERSON, "steps": 5}
    response = operator_client.post("/api/training-runs", body, content_type="application/json")
    assert response.status_code == 201, response.content
    assert (response.json()["status"], response.json()["steps"]) == ("queued", 5)
    assert [run["name"] for run in operator_client.get("/api/training-runs").json()] == ["cars"]
    refused = operator_client.post("/api/training-runs", {**body, "name": "more", "steps": 0},
                                   content_type="application/json")
    assert refused.status_code == 422
    refused = operator_client.post("/api/training-runs", {**body, "name": "more", "camera": 999},
                                   content_type="application/json")
    assert refused.status_code == 404
    refused = operator_client.post("/api/training-runs", body, content_type="application/json")
    assert refused.status_code == 400 and "already under way" in refused.json()["detail"]
