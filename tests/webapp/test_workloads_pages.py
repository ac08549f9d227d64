"""The cameras and analysis pages: operators change things through forms, viewers only look, names are escaped."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.webapp.test_workloads_factories import (
    make_camera,
    make_model,
    make_query,
    measured,
    synthetic_source,
    write_weights,
)
from webapp.workloads.models import Camera, ModelEntry, Query, WorkloadAnalysis
from webapp.workloads.services import workload_analyze

pytestmark = pytest.mark.django_db
XSS = "<script>alert(1)</script>"


@pytest.fixture
def hostile_workload():
    """A camera and a model whose names are markup, and a query over them (query names are identifiers)."""
    camera = make_camera(XSS, thumbnail="")
    model = make_model(XSS)
    query = make_query("north_vehicles", camera=camera, model=model)
    workload_analyze(queries=[query], user=None)
    return camera, model, query


def page_urls(camera: Camera, model: ModelEntry, query: Query) -> list[str]:
    return [
        reverse("cameras"), reverse("analysis"), reverse("camera_create"), reverse("model_create"),
        reverse("query_create"), reverse("camera_edit", args=[camera.pk]), reverse("camera_delete", args=[camera.pk]),
        reverse("model_edit", args=[model.pk]), reverse("model_delete", args=[model.pk]),
        reverse("query_edit", args=[query.pk]), reverse("query_delete", args=[query.pk]),
    ]


def test_every_page_renders_markup_in_names_as_text(operator_client, hostile_workload):
    for url in page_urls(*hostile_workload):
        response = operator_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert XSS not in body, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in operator_client.get(reverse("cameras")).content.decode()


def test_a_refused_query_name_is_echoed_escaped_in_the_form(operator_client, hostile_workload):
    camera, model, _ = hostile_workload
    response = operator_client.post(reverse("query_create"), {
        "name": XSS, "camera": camera.pk, "model": model.pk, "kind": "presence", "classes": ["car"],
        "target_fraction": 0.95, "slo_ms": 500,
    })
    assert response.status_code == 400
    assert XSS not in response.content.decode()


def test_viewers_see_no_write_buttons_and_get_403_on_every_write(viewer_client, hostile_workload):
    camera, model, query = hostile_workload
    body = viewer_client.get(reverse("cameras")).content.decode()
    for marker in ('id="add-camera"', 'id="add-model"', 'id="add-query"', "edit-camera-", "demo-seed-form"):
        assert marker not in body
    assert 'id="analysis-form"' not in viewer_client.get(reverse("analysis")).content.decode()
    for url in page_urls(camera, model, query)[2:]:
        assert viewer_client.get(url).status_code == 403, url
        assert viewer_client.post(url, {"name": "x"}).status_code == 403, url
    assert viewer_client.post(reverse("analysis"), {"mode": "shape"}).status_code == 403
    assert viewer_client.post(reverse("demo_seed"), {"scale": "tiny"}).status_code == 403
    assert Camera.objects.get().name == XSS and Query.objects.count() == 1


def test_anonymous_visitors_are_sent_to_the_login_page(client, hostile_workload):
    camera, _, _ = hostile_workload
    for url in [reverse("cameras"), reverse("analysis"), reverse("camera_thumbnail", args=[camera.pk])]:
        response = client.get(url)
        assert response.status_code == 302 and reverse("login") in response["Location"], url


def test_an_operator_registers_a_camera_and_sees_its_thumbnail_behind_login(operator_client, client):
    response = operator_client.post(reverse("camera_create"), {
        "name": "gate", "source": synthetic_source("gate"), "fps": 5, "width": 32, "height": 32,
    })
    assert response.status_code == 302
    camera = Camera.objects.get(name="gate")
    thumbnail = operator_client.get(reverse("camera_thumbnail", args=[camera.pk]))
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/png"
    assert b"".join(thumbnail.streaming_content).startswith(b"\x89PNG")


def test_a_refused_source_is_shown_in_the_form(operator_client):
    response = operator_client.post(reverse("camera_create"), {
        "name": "bad", "source": "file:///etc/passwd", "fps": 5, "width": 32, "height": 32,
    })
    assert response.status_code == 400
    assert "inside the media folder" in response.content.decode()
    assert not Camera.objects.exists()


def test_an_operator_uploads_a_model_and_creates_a_query(operator_client, tmp_path, django_capture_on_commit_callbacks):
    weights = write_weights(tmp_path / "w.safetensors")
    with weights.open("rb") as handle:
        response = operator_client.post(reverse("model_create"), {
            "name": "tiny", "arch": "mobilenet_v3_small", "builder_args": '{"num_classes": 2}', "weights": handle,
        })
    assert response.status_code == 302, response.content.decode()
    camera = make_camera()
    with django_capture_on_commit_callbacks() as callbacks:
        response = operator_client.post(reverse("query_create"), {
            "name": "north_cars", "camera": camera.pk, "model": ModelEntry.objects.get().pk, "kind": "presence",
            "classes": ["car"], "target_fraction": 0.9, "slo_ms": 300,
        })
    assert response.status_code == 302
    assert Query.objects.get().status == Query.Status.PENDING and len(callbacks) == 1


def test_deleting_a_camera_in_use_asks_first_and_then_explains_the_refusal(operator_client):
    query = make_query()
    url = reverse("camera_delete", args=[query.camera.pk])
    assert 'id="confirm-delete"' in operator_client.get(url).content.decode()
    response = operator_client.post(url)
    assert response.status_code == 200 and "north_vehicles" in response.content.decode()
    assert Camera.objects.exists()


def test_an_operator_runs_an_analysis_over_every_ready_query_by_default(operator_client):
    camera = make_camera()
    make_query("a", camera=camera, model=make_model("m1"))
    make_query("b", camera=camera, model=make_model("m2"))
    make_query("c_pending", camera=camera, model=make_model("m3"), status=Query.Status.PENDING)
    response = operator_client.post(reverse("analysis"), {"mode": "shape"})
    assert response.status_code == 302
    body = operator_client.get(reverse("analysis")).content.decode()
    assert 'id="bytes-chart"' in body and 'id="analysis-data"' in body and "a ↔ b" in body
    assert "c_pending" not in body[body.index('id="analysis-summary"'):]
    fraction = WorkloadAnalysis.objects.get().result["max_savings_fraction"]
    assert f"saved ({100 * fraction:.1f}% of the total)" in body  # a percentage, not a bare ratio like 0.329


def test_analysing_with_no_ready_query_says_so(operator_client):
    make_query("p", status=Query.Status.PENDING)
    response = operator_client.post(reverse("analysis"), {"mode": "shape"})
    assert response.status_code == 400
    assert 'id="form-errors" class="error"' in response.content.decode()
    assert "no query is ready yet (1 still being measured or failed)" in response.content.decode()


def test_analysing_with_no_query_at_all_says_where_to_register_them(operator_client):
    response = operator_client.post(reverse("analysis"), {"mode": "shape"})
    assert "no query yet: register cameras, models and queries" in response.content.decode()


def test_editing_only_the_target_keeps_every_task_field_and_the_measurement(operator_client):
    query = make_query(task={"kind": "presence", "classes": ["car"], "count_edges": [1, 3], "min_box_area": 16},
                       unmerged_accuracy=0.825, chance_accuracy=0.508)
    url = reverse("query_edit", args=[query.pk])
    page = operator_client.get(url)
    form = page.context["form"]
    data = {name: form.initial[name] for name in ("name", "kind", "count_edges", "target_fraction", "slo_ms")}
    data["classes"] = form.initial["classes"]
    data["target_fraction"] = 1.0
    response = operator_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    query.refresh_from_db()
    assert query.target_fraction == 1.0
    assert query.task["min_box_area"] == 16
    assert query.status == Query.Status.READY and query.unmerged_accuracy == 0.825 and query.chance_accuracy == 0.508


def test_a_query_no_better_than_chance_is_flagged_on_its_page_in_the_api_and_before_a_merge(operator_client):
    camera, model = make_camera(), make_model()
    no_lead = {"accuracy": -0.038, "interval": [-0.09, 0.012], "frames": 100}
    clear_lead = {"accuracy": 0.3, "interval": [0.25, 0.35], "frames": 100}
    useless = make_query("east_useless", camera=camera, model=model, unmerged_test=measured(0.475),
                         chance_test=measured(0.513), chance_lead=no_lead)
    useful = make_query("north_useful", camera=camera, model=model, unmerged_test=measured(0.9),
                        chance_test=measured(0.6), chance_lead=clear_lead)
    page = operator_client.get("/cameras/").content.decode()
    assert f'id="no-better-than-chance-{useless.pk}"' in page
    assert f'id="no-better-than-chance-{useful.pk}"' not in page
    assert ("leads always answering the commonest class, 0.513 [0.463, 0.563], by -0.038 [-0.090, 0.012]: not clearly "
            "above 0") in page
    listed = {q["name"]: q for q in operator_client.get("/api/queries").json()}
    assert listed["east_useless"]["chance_shortfall"].startswith("its test accuracy 0.475 [0.425, 0.525]")
    assert listed["north_useful"]["chance_shortfall"] is None
    assert listed["north_useful"]["chance_test"] == measured(0.6)
    assert listed["north_useful"]["chance_lead"] == clear_lead
    merges = operator_client.get("/merges/").content.decode()
    assert f'id="chance-warning-{useless.pk}"' in merges
    assert f'id="chance-warning-{useful.pk}"' not in merges


def test_a_detector_that_finds_nothing_is_flagged_and_an_unmeasured_baseline_is_not_judged(operator_client):
    camera = make_camera()
    blind = make_query("south_detect", camera=camera, model=make_model("detector"),
                       task={"kind": "detection", "classes": ["car"]}, unmerged_test=measured(0.0, half_width=0.0))
    before_baselines = make_query("north_old", camera=camera, model=make_model("old"), unmerged_test=measured(0.5),
                                  chance_test=None, chance_lead=None)
    page = operator_client.get("/cameras/").content.decode()
    assert f'id="no-better-than-chance-{blind.pk}"' in page
    assert "not clearly above 0, what a detector that finds nothing scores" in page
    assert f'id="no-better-than-chance-{before_baselines.pk}"' not in page
