"""Queries: checked against their camera and model, measured once by a worker, analysed on the meta device."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.waiting import wait_until
from tests.webapp.test_workloads_factories import PRESENCE, make_camera, make_model, make_query, synthetic_source
from webapp.workloads.models import Query
from webapp.workloads.selectors import queries_ready
from webapp.workloads.services import query_create, query_delete, query_measure, query_update, workload_analyze

pytestmark = pytest.mark.django_db


def create(**kwargs) -> Query:
    kwargs.setdefault("name", "north_vehicles")
    if "camera" not in kwargs:
        kwargs["camera"] = make_camera()
    if "model" not in kwargs:
        kwargs["model"] = make_model()
    kwargs.setdefault("task", PRESENCE)
    return query_create(**kwargs)


def test_creating_a_query_queues_its_measurement_after_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        query = create(target_fraction=0.9, slo_ms=200)
    assert query.status == Query.Status.PENDING
    assert query.task["kind"] == "presence" and query.task["count_edges"] == [1, 3]  # normalised by the engine
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "<script>alert(1)</script>"}, "letters, digits"),
        ({"task": {"kind": "dance", "classes": ["car"]}}, "task kind"),
        ({"task": {"kind": "presence", "classes": ["dragon"]}}, "unknown class"),
        ({"task": "presence"}, "task must be an object"),
        ({"task": {"kind": "count", "classes": ["car"]}}, "needs 3"),
        ({"task": {"kind": "detection", "classes": ["car"]}}, "needs a detection model"),
        ({"target_fraction": 1.5}, "accuracy target"),
        ({"slo_ms": -1}, "slo_ms"),
    ],
)
def test_it_refuses_a_malformed_query(fields, message):
    with pytest.raises(ValidationError, match=message):
        create(**fields)
    assert not Query.objects.exists()


def test_it_refuses_classes_the_camera_never_shows():
    camera = make_camera("cars_only", source=synthetic_source("cars") + "&classes=car")
    with pytest.raises(ValidationError, match="never shows bus, truck"):
        create(camera=camera)


def test_measuring_sets_the_unmerged_accuracy_on_validation_and_test_frames_once():
    query = make_query(status=Query.Status.PENDING)
    measured = query_measure(query_id=query.pk)
    assert measured.status == Query.Status.READY, measured.status_detail
    assert 0 <= measured.unmerged_accuracy <= 1 and 0 < measured.chance_accuracy <= 1
    test = measured.unmerged_test
    assert test["interval"][0] <= test["accuracy"] <= test["interval"][1] and test["frames"] > 0
    assert f"validation and {test['frames']} held-out test frames" in measured.status_detail
    assert "(trained on " in measured.status_detail  # how many frames of each split, and where the labels came from
    assert measured.status_detail.endswith("labels: the synthetic scene's ground truth")
    assert query_measure(query_id=query.pk) is None  # claimed once: a second delivery does nothing


def test_measuring_a_query_whose_weights_vanished_fails_with_the_reason():
    query = make_query(status=Query.Status.PENDING)
    query.model.weights.storage.delete(query.model.weights.name)
    measured = query_measure(query_id=query.pk)
    assert measured.status == Query.Status.FAILED
    assert "not found" in measured.status_detail


def test_changing_the_task_measures_the_query_again_but_a_new_target_does_not():
    query = make_query(model=make_model(num_classes=2))
    query_update(query=query, target_fraction=0.8)
    assert query.status == Query.Status.READY
    query_update(query=query, task={"kind": "presence", "classes": ["car"]})
    query.refresh_from_db()
    assert query.status == Query.Status.PENDING


def test_a_query_of_a_merge_job_is_kept():
    from webapp.merges.models import MergeJob

    query = make_query()
    MergeJob.objects.create().queries.add(query)
    with pytest.raises(ValidationError, match="merge jobs"):
        query_delete(query=query)


def test_analysis_finds_layers_two_models_can_share_without_weights():
    camera = make_camera()
    make_query("a", camera=camera, model=make_model("m1"))
    make_query("b", camera=camera, model=make_model("m2", arch="resnet18"))
    make_query("c", camera=camera, model=make_model("m3"))
    analysis = workload_analyze(queries=queries_ready(), mode="shape", user=None)
    result = analysis.result
    assert [m["name"] for m in result["models"]] == ["a", "b", "c"]
    assert result["max_savings_bytes"] > 0
    assert any({"a", "c"} <= {m["model"] for m in i["members"]} for i in result["instances"])
    assert set(analysis.queries.values_list("name", flat=True)) == {"a", "b", "c"}


def test_analysis_needs_queries_and_a_known_mode():
    with pytest.raises(ValidationError):
        workload_analyze(queries=[], user=None)
    with pytest.raises(ValidationError, match="match mode"):
        workload_analyze(queries=[make_query()], mode="fuzzy", user=None)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_measures_a_new_query(celery_worker):
    query = create()
    wait_until(lambda: Query.objects.get(pk=query.pk).status in (Query.Status.READY, Query.Status.FAILED),
               timeout=300, what="the worker to measure the query", context=celery_worker.log_tail)
    query.refresh_from_db()
    assert query.status == Query.Status.READY, (query.status_detail, celery_worker.log_tail())
    assert query.unmerged_accuracy is not None
    # The commonest-class baseline is measured on the same held-out test frames as the model.
    assert query.chance_test["frames"] == query.unmerged_test["frames"] > 0
    assert query.chance_test["interval"][0] <= query.chance_test["accuracy"] <= query.chance_test["interval"][1]


@pytest.fixture
def measured_before_test_frames(transactional_db) -> Query:
    """A query the held-out-test migration sent back to pending: nothing queued its measurement."""
    return make_query(status=Query.Status.PENDING, status_detail="measured before held-out test frames existed")


@pytest.mark.django_db(transaction=True)
def test_a_starting_worker_measures_the_queries_left_pending(measured_before_test_frames, celery_worker):
    query = measured_before_test_frames
    wait_until(lambda: Query.objects.get(pk=query.pk).status in (Query.Status.READY, Query.Status.FAILED),
               timeout=300, what="the starting worker to measure the pending query", context=celery_worker.log_tail)
    query.refresh_from_db()
    assert query.status == Query.Status.READY, (query.status_detail, celery_worker.log_tail())
    assert query.unmerged_test["frames"] > 0


def test_a_measurement_abandoned_by_a_dead_worker_is_taken_over():
    from django.utils import timezone

    from webapp.workloads.services import MEASURE_STALE

    query = make_query(status=Query.Status.MEASURING)
    assert query_measure(query_id=query.pk) is None  # someone is measuring it right now
    Query.objects.filter(pk=query.pk).update(updated_at=timezone.now() - MEASURE_STALE * 2)
    assert query_measure(query_id=query.pk).status == Query.Status.READY


def test_measuring_finds_the_cameras_first_test_frame_which_deployments_serve_from(operator_client):
    from pathlib import Path

    from django.conf import settings

    from gemel_engine.workload import camera_frames
    from tests.webapp.test_edge_factories import make_bundle, make_node
    from webapp.edge.selectors import deployment_desired_json
    from webapp.edge.services import deployment_create
    from webapp.workloads.engine import live_workload
    from webapp.workloads.services import camera_update

    query = make_query(status=Query.Status.PENDING)
    camera = query.camera
    assert camera.test_start_frame is None
    assert query_measure(query_id=query.pk).status == Query.Status.READY
    camera.refresh_from_db()
    workload = live_workload([query])
    frames = camera_frames(workload, workload.cameras[0], cache_dir=Path(settings.MEDIA_ROOT) / "frame-cache")
    assert camera.test_start_frame == int(frames.test.indices.min()) > int(frames.val.indices.max())

    node, _ = make_node()
    deployment = deployment_create(bundle=make_bundle(queries=[query]), node=node, user=None)
    [served] = deployment_desired_json(deployment, file_url=lambda pk, name: name)["queries"]
    assert served["camera"]["start_frame"] == camera.test_start_frame
    node.active_deployment = deployment
    node.save()
    page = operator_client.get(f"/monitor/?node={node.pk}").content.decode()
    assert f"{camera.name} from frame {camera.test_start_frame}" in page

    # New frames (another size) make the old split meaningless: the start is found again at the next measurement.
    camera_update(camera=camera, width=48)
    camera.refresh_from_db()
    assert camera.test_start_frame is None
    [served] = deployment_desired_json(deployment, file_url=lambda pk, name: name)["queries"]
    assert served["camera"]["start_frame"] == 0
