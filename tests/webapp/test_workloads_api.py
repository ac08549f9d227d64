"""The workloads API: reads for signed-in users, writes for operators, 401 without a session, 403 without CSRF."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.webapp.test_workloads_factories import make_camera, make_model, make_query, synthetic_source, write_weights
from webapp.workloads.models import Camera, ModelEntry, Query

pytestmark = pytest.mark.django_db


def post_json(client: Client, url: str, data: dict) -> object:
    return client.post(url, json.dumps(data), content_type="application/json")


def test_an_operator_manages_cameras_models_and_queries(operator_client, tmp_path, django_capture_on_commit_callbacks):
    response = post_json(operator_client, "/api/cameras", {"name": "gate", "source": synthetic_source("gate"),
                                                           "fps": 5, "width": 32, "height": 32})
    assert response.status_code == 201, response.content
    camera = response.json()
    assert camera["thumbnail_url"].endswith("thumbnail.png")

    weights = write_weights(tmp_path / "w.safetensors")
    with weights.open("rb") as handle:
        response = operator_client.post("/api/models", {"name": "tiny", "arch": "mobilenet_v3_small",
                                                        "builder_args": '{"num_classes": 2}', "weights": handle})
    assert response.status_code == 201, response.content
    model = response.json()
    assert model["param_bytes"] > 0 and len(model["weights_sha256"]) == 64

    with django_capture_on_commit_callbacks() as callbacks:
        response = post_json(operator_client, "/api/queries", {
            "name": "gate_cars", "camera": camera["id"], "model": model["id"],
            "task": {"kind": "presence", "classes": ["car"]},
        })
    assert response.status_code == 201 and response.json()["status"] == "pending"
    assert len(callbacks) == 1
    query_id = response.json()["id"]

    response = operator_client.patch(f"/api/queries/{query_id}", {"slo_ms": 250}, content_type="application/json")
    assert response.status_code == 200 and response.json()["slo_ms"] == 250
    assert operator_client.delete(f"/api/cameras/{camera['id']}").status_code == 400  # still used
    assert operator_client.delete(f"/api/queries/{query_id}").status_code == 204
    assert operator_client.delete(f"/api/models/{model['id']}").status_code == 204
    assert operator_client.delete(f"/api/cameras/{camera['id']}").status_code == 204
    assert not (Camera.objects.exists() or ModelEntry.objects.exists() or Query.objects.exists())


def test_refusals_come_back_as_400_with_a_detail(operator_client, tmp_path):
    response = post_json(operator_client, "/api/cameras", {"name": "x", "source": "file:///etc/passwd"})
    assert response.status_code == 400 and "inside the media folder" in response.json()["detail"]
    evil = tmp_path / "evil.pt"
    sentinel = tmp_path / "pwned"
    evil.write_bytes(f"cos\nsystem\n(S'touch {sentinel}'\ntR.".encode())
    with evil.open("rb") as handle:
        response = operator_client.post("/api/models", {"name": "evil", "arch": "resnet18", "weights": handle})
    assert response.status_code == 400 and "cannot read weights safely" in response.json()["detail"]
    assert not sentinel.exists()
    assert operator_client.get("/api/cameras/999").status_code == 404


def test_analyses_cover_every_ready_query_by_default_as_the_page_does(operator_client):
    camera = make_camera()
    make_query("a", camera=camera, model=make_model("m1"))
    make_query("b", camera=camera, model=make_model("m2"))
    make_query("c_pending", camera=camera, model=make_model("m3"), status="pending")
    response = post_json(operator_client, "/api/analyses", {"mode": "shape"})
    assert response.status_code == 201
    assert len(response.json()["queries"]) == 2 and response.json()["result"]["max_savings_bytes"] > 0
    assert len(operator_client.get("/api/analyses").json()) == 1


def test_viewers_read_but_every_write_is_403(viewer_client, tmp_path):
    query = make_query()
    assert viewer_client.get("/api/queries").json()[0]["name"] == "north_vehicles"
    assert viewer_client.get(f"/api/cameras/{query.camera_id}").status_code == 200
    weights = write_weights(tmp_path / "w.safetensors")
    writes = [
        lambda: post_json(viewer_client, "/api/cameras", {"name": "x", "source": synthetic_source("x")}),
        lambda: viewer_client.patch(f"/api/cameras/{query.camera_id}", {"name": "y"}, content_type="application/json"),
        lambda: viewer_client.delete(f"/api/queries/{query.pk}"),
        lambda: viewer_client.delete(f"/api/models/{query.model_id}"),
        lambda: viewer_client.post("/api/models", {"name": "m", "arch": "mobilenet_v3_small",
                                                   "weights": weights.open("rb")}),
        lambda: post_json(viewer_client, "/api/queries", {"name": "q", "camera": query.camera_id,
                                                          "model": query.model_id, "task": {}}),
        lambda: post_json(viewer_client, "/api/analyses", {}),
        lambda: post_json(viewer_client, "/api/demo-seeds", {"scale": "tiny"}),
    ]
    for write in writes:
        response = write()
        assert response.status_code == 403, response.content
        assert "detail" in response.json()
    assert Query.objects.count() == 1 and Camera.objects.get().name == "north"


def test_anonymous_callers_get_401_and_nothing_else():
    make_query()
    client = Client()
    for url in ("/api/cameras", "/api/models", "/api/queries", "/api/analyses", "/api/demo-seeds"):
        assert client.get(url).status_code == 401, url
    assert post_json(client, "/api/cameras", {"name": "x", "source": synthetic_source("x")}).status_code == 401


def test_session_writes_without_the_csrf_token_are_refused(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = post_json(client, "/api/cameras", {"name": "x", "source": synthetic_source("x")})
    assert response.status_code == 403
    assert not Camera.objects.exists()


def test_an_oversized_upload_is_refused_from_its_length_before_the_body_is_parsed(operator_client, settings):
    settings.MAX_WEIGHTS_UPLOAD_MB = 1
    body = b"x" * (3 * 1024 * 1024)
    for url in ("/api/models", "/models/new/"):
        response = operator_client.generic("POST", url, body, content_type="multipart/form-data; boundary=zzz")
        assert response.status_code == 413, url
        assert b"over the limit of 1 MiB" in response.content
    assert not ModelEntry.objects.exists()


def test_an_analysis_of_unknown_query_ids_names_them_like_a_merge_job(operator_client):
    query = make_query()
    response = operator_client.post("/api/analyses", {"queries": [query.pk, 999_999, 999_998]},
                                    content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"] == "unknown query ids: 999998, 999999"
    for path, body in (("/api/analyses", {"queries": [2**70]}),
                       ("/api/merge-jobs", {"queries": [2**70], "strategy": "gemel"}),
                       ("/api/analyses", {"queries": list(range(1, 2000))})):
        assert operator_client.post(path, body, content_type="application/json").status_code == 422, path


def test_numbers_past_any_sensible_range_are_refused_with_the_range(operator_client):
    query = make_query()
    task = {"kind": "count", "classes": ["car"], "count_edges": [2**70]}
    created = operator_client.post("/api/queries", {"name": "q2", "camera": query.camera_id, "model": query.model_id,
                                                    "task": task}, content_type="application/json")
    assert created.status_code == 400 and "[1, 10000]" in created.json()["detail"]
    patched = operator_client.patch(f"/api/queries/{query.pk}", {"slo_ms": 1e308}, content_type="application/json")
    assert patched.status_code == 400 and "up to 3.6e+06" in patched.json()["detail"]
    job = operator_client.post("/api/merge-jobs", {"queries": [query.pk], "strategy": "gemel", "budget_minutes": 1e300},
                               content_type="application/json")
    assert job.status_code == 400 and "workers' limit" in job.json()["detail"]


@pytest.mark.parametrize(("arch", "builder_args", "reason"), [
    ("fasterrcnn_resnet18_fpn", '{"num_classes": 3, "anchor_scale": 1e308}', "finite number"),
    ("fasterrcnn_resnet18_fpn", '{"num_classes": 3, "anchor_scale": Infinity}', "finite number"),
    ("fasterrcnn_resnet18_fpn", '{"num_classes": 3, "anchor_scale": NaN}', "finite number"),
    ("fasterrcnn_resnet18_fpn", '{"num_classes": 3, "anchor_scale": 1e400}', "finite number"),
    ("fasterrcnn_resnet18_fpn", '{"num_classes": 3, "anchor_scale": 100}', "anchor_scale must be a number in (0, 16]"),
    ("mobilenet_v2", '{"num_classes": 3, "width_mult": 1e308}', "finite number"),
    ("mobilenet_v2", '{"num_classes": 1' + "0" * 400 + "}", "finite number"),
])
def test_builder_numbers_that_are_not_finite_or_out_of_range_get_400_with_the_reason(
    operator_client, tmp_path, arch, builder_args, reason
):
    weights = write_weights(tmp_path / "w.safetensors")
    with weights.open("rb") as handle:
        response = operator_client.post("/api/models", {"name": "big", "arch": arch, "builder_args": builder_args,
                                                        "weights": handle})
    assert response.status_code == 400, response.content
    assert reason in response.json()["detail"]
    assert not ModelEntry.objects.exists()
