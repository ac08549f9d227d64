"""The agent API (docs/agent-protocol.md) through Django's test client with bearer tokens."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.webapp.test_edge_factories import make_bundle, make_node
from webapp.edge.models import Deployment, EdgeNode, MetricSample
from webapp.edge.services import agent_token_create, agent_token_revoke, deployment_create

pytestmark = pytest.mark.django_db


def call(client, method: str, path: str, token: str | None, body: dict[str, Any] | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    if method == "GET":
        return client.get(path, **headers)
    return client.post(path, body or {}, content_type="application/json", **headers)


def register_body(node: str = "edge-1", **extra: Any) -> dict[str, Any]:
    return {"protocol": 1, "node": node, "agent_version": "0.1.0",
            "device": {"kind": "cpu", "name": "cpu", "memory_total_bytes": 1 << 30},
            "budget_bytes": 1 << 30, "active_deployment": None, **extra}


def heartbeat_body(node: str = "edge-1", **extra: Any) -> dict[str, Any]:
    return {"node": node, "active_deployment": None, "status": "idle", "detail": "", **extra}


def metrics_body(node: str = "edge-1", **extra: Any) -> dict[str, Any]:
    return {"node": node, "at": "2026-11-29T16:40:00.123Z", "deployment": None, "simulated": True,
            "memory": {"budget_bytes": 1 << 30, "resident_bytes": 5 << 20, "shared_bytes": 3 << 20,
                       "per_model_bytes": {"north_cars": 2 << 20}, "swapped_bytes_total": 0, "gpu": None},
            "queries": {"north_cars": {"fps": 4.9, "drop_rate": 0.01, "effective_accuracy": 0.9}}, **extra}


def test_it_refuses_a_missing_or_unknown_token_with_401(client):
    assert call(client, "POST", "/api/agent/register", None, register_body()).status_code == 401
    response = call(client, "POST", "/api/agent/register", "not-a-token", register_body())
    assert response.status_code == 401
    assert "detail" in response.json()


def test_it_refuses_a_revoked_token_with_403(client):
    token, plain = agent_token_create(name="old")
    agent_token_revoke(token=token)
    response = call(client, "POST", "/api/agent/register", plain, register_body())
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_it_refuses_a_dashboard_session_on_agent_endpoints(operator_client):
    assert call(operator_client, "POST", "/api/agent/register", None, register_body()).status_code == 401


def test_it_refuses_an_agent_token_on_operator_endpoints(client):
    _, plain = make_node()
    assert call(client, "GET", "/api/nodes", plain).status_code == 401
    assert call(client, "POST", "/api/agent-tokens", plain, {"name": "x"}).status_code == 401


def test_it_registers_a_node_and_answers_the_intervals(client, settings):
    settings.AGENT_HEARTBEAT_SECONDS = 2
    _, plain = agent_token_create(name="edge")
    response = call(client, "POST", "/api/agent/register", plain, register_body())
    assert response.status_code == 200
    assert response.json() == {"node": "edge-1", "heartbeat_interval_s": 2, "metrics_interval_s": 1}
    node = EdgeNode.objects.get(name="edge-1")
    assert (node.device_kind, node.memory_total_bytes, node.status) == ("cpu", 1 << 30, "idle")


def test_it_refuses_another_protocol_version(client):
    _, plain = agent_token_create(name="edge")
    response = call(client, "POST", "/api/agent/register", plain, register_body(protocol=2))
    assert response.status_code == 400
    assert "protocol 2" in response.json()["detail"]


def test_it_answers_404_to_a_heartbeat_of_an_unregistered_node(client):
    _, plain = agent_token_create(name="edge")
    response = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body("nobody"))
    assert response.status_code == 404
    assert "unknown node" in response.json()["detail"]


def test_it_answers_no_desired_state_before_anything_is_deployed(client):
    _, plain = make_node()
    response = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body())
    assert response.status_code == 200
    assert response.json() == {"desired": None}
    assert EdgeNode.objects.get().last_seen_at is not None


def test_it_answers_the_newest_deployment_with_its_files_and_queries(client, operator):
    node, plain = make_node()
    bundle = make_bundle()
    deployment = deployment_create(bundle=bundle, node=node, user=operator)
    desired = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body()).json()["desired"]
    assert desired["deployment"] == deployment.pk
    assert desired["scheduler"] == "merged" and desired["budget_bytes"] == 256 << 20
    files = {f["name"]: f for f in desired["bundle"]["files"]}
    assert set(files) == {"manifest.json", "tensors.safetensors"}
    assert files["tensors.safetensors"]["url"] == f"/api/agent/deployments/{deployment.pk}/files/tensors.safetensors"
    assert files["tensors.safetensors"]["sha256"] == bundle.files["tensors.safetensors"]["sha256"]
    [query] = desired["queries"]
    assert query["name"] == "north_cars" and query["model"] == "north_cars"
    assert query["task"]["kind"] == "presence" and query["slo_ms"] == 400.0
    assert query["camera"]["fps"] == 5.0 and query["camera"]["width"] == 32
    assert query["camera"]["source"].startswith("synthetic://")


def test_the_desired_state_is_what_the_engines_protocol_reads_back_unchanged(client, operator):
    from gemel_engine.runtime.protocol import DeploymentSpec

    node, plain = make_node()
    deployment_create(bundle=make_bundle(), node=node, user=operator)
    desired = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body()).json()["desired"]
    assert {k: v for k, v in desired.items() if k != "bundle"} == DeploymentSpec.from_json(desired).to_json()


def test_a_stored_deployment_the_protocol_refuses_answers_409_saying_why(client, operator):
    node, plain = make_node()
    deployment = deployment_create(bundle=make_bundle(), node=node, user=operator)
    Deployment.objects.filter(pk=deployment.pk).update(scheduler="fifo")
    response = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body())
    assert response.status_code == 409 and "unknown scheduler 'fifo'" in response.json()["detail"]


def test_it_streams_bundle_files_to_the_nodes_own_agent_only(client, operator):
    node, plain = make_node()
    _, stranger = make_node("edge-2", token_name="other")
    deployment = deployment_create(bundle=make_bundle(), node=node, user=operator)
    path = f"/api/agent/deployments/{deployment.pk}/files/tensors.safetensors"
    response = call(client, "GET", path, plain)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == deployment.bundle.files["tensors.safetensors"]["sha256"]
    assert call(client, "GET", path, stranger).status_code == 404


def test_it_serves_no_file_outside_the_bundle_folder(client, operator, tmp_path):
    node, plain = make_node()
    bundle = make_bundle()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    folder = Path(bundle.path)
    os.symlink(secret, folder / "link.bin")
    bundle.files = {**bundle.files, "link.bin": {"sha256": "0" * 64, "size_bytes": 12}}
    bundle.save()
    deployment = deployment_create(bundle=bundle, node=node, user=operator)
    base = f"/api/agent/deployments/{deployment.pk}/files/"
    assert call(client, "GET", base + "link.bin", plain).status_code == 404
    assert call(client, "GET", base + "..", plain).status_code == 404
    assert call(client, "GET", base + "workload.json", plain).status_code == 404


def test_it_records_each_status_step_and_supersedes_the_previous_deployment(client, operator):
    node, plain = make_node()
    first = deployment_create(bundle=make_bundle(), node=node, user=operator)
    for status in ("downloading", "loading", "warming", "active"):
        response = call(client, "POST", f"/api/agent/deployments/{first.pk}/status", plain,
                         {"node": "edge-1", "status": status, "detail": ""})
        assert response.status_code == 200
    second = deployment_create(bundle=make_bundle(), node=node, user=operator)
    call(client, "POST", f"/api/agent/deployments/{second.pk}/status", plain,
         {"node": "edge-1", "status": "active", "detail": ""})
    first.refresh_from_db()
    node.refresh_from_db()
    assert first.status == "superseded"
    assert node.active_deployment_id == second.pk and node.status == "serving"
    assert [h.status for h in first.history.all()] == ["pending", "downloading", "loading", "warming", "active",
                                                       "superseded"]


def test_a_deployments_history_keeps_only_the_newest_changes(client, operator, monkeypatch):
    monkeypatch.setattr("webapp.edge.services.DEPLOYMENT_HISTORY_KEPT", 5)
    node, plain = make_node()
    deployment = deployment_create(bundle=make_bundle(), node=node, user=operator)
    for step in range(12):
        response = call(client, "POST", f"/api/agent/deployments/{deployment.pk}/status", plain,
                        {"node": "edge-1", "status": "failed", "detail": f"attempt {step}: " + "x" * 1000})
        assert response.status_code == 200
    kept = [h.detail.split(":")[0] for h in deployment.history.all()]
    assert kept == [f"attempt {step}" for step in range(7, 12)]


def test_a_status_repeated_with_the_same_detail_adds_no_history(client, operator):
    node, plain = make_node()
    deployment = deployment_create(bundle=make_bundle(), node=node, user=operator)
    for status in ("downloading", "downloading", "loading", "loading", "loading", "downloading"):
        call(client, "POST", f"/api/agent/deployments/{deployment.pk}/status", plain,
             {"node": "edge-1", "status": status, "detail": ""})
    assert [h.status for h in deployment.history.all()] == ["pending", "downloading", "loading", "downloading"]


def test_it_keeps_the_active_deployment_when_the_next_one_fails(client, operator):
    node, plain = make_node()
    first = deployment_create(bundle=make_bundle(), node=node, user=operator)
    call(client, "POST", f"/api/agent/deployments/{first.pk}/status", plain, {"node": "edge-1", "status": "active"})
    second = deployment_create(bundle=make_bundle(), node=node, user=operator)
    response = call(client, "POST", f"/api/agent/deployments/{second.pk}/status", plain,
                    {"node": "edge-1", "status": "failed", "detail": "bundle refused: sha256 differs"})
    assert response.status_code == 200
    node.refresh_from_db()
    second.refresh_from_db()
    assert node.active_deployment_id == first.pk
    assert node.status == "degraded" and "sha256" in node.status_detail
    assert second.status == "failed" and "sha256" in second.detail
    assert Deployment.objects.get(pk=first.pk).status == "active"


def test_it_refuses_a_status_for_another_nodes_deployment(client, operator):
    node, _ = make_node()
    _, stranger = make_node("edge-2", token_name="other")
    deployment = deployment_create(bundle=make_bundle(), node=node, user=operator)
    response = call(client, "POST", f"/api/agent/deployments/{deployment.pk}/status", stranger,
                    {"node": "edge-2", "status": "active"})
    assert response.status_code == 404


def test_it_stores_metrics_and_keeps_only_the_newest_samples(client, settings):
    settings.METRICS_RETENTION = 10
    node, plain = make_node()
    ids = [call(client, "POST", "/api/agent/metrics", plain, metrics_body()).json()["stored"] for _ in range(10)]
    assert MetricSample.objects.filter(node=node).count() == 10  # at the limit: nothing goes
    ids.append(call(client, "POST", "/api/agent/metrics", plain, metrics_body()).json()["stored"])
    kept = list(MetricSample.objects.filter(node=node).order_by("id").values_list("id", flat=True))
    assert kept == ids[-9:]  # past it, the oldest go until a tenth of the limit is free
    ids += [call(client, "POST", "/api/agent/metrics", plain, metrics_body()).json()["stored"] for _ in range(2)]
    kept = list(MetricSample.objects.filter(node=node).order_by("id").values_list("id", flat=True))
    assert kept == ids[-9:] or kept == ids[-10:]
    node.refresh_from_db()
    assert node.retained_samples == len(kept)
    assert node.retained_bytes == sum(MetricSample.objects.filter(node=node).values_list("payload_bytes", flat=True))
    sample = MetricSample.objects.get(pk=ids[-1])
    assert (sample.resident_bytes, sample.shared_bytes, sample.simulated) == (5 << 20, 3 << 20, True)
    assert sample.payload["queries"]["north_cars"]["fps"] == 4.9


def test_retention_counts_bytes_too_so_large_reports_keep_fewer_samples(client, settings):
    node, plain = make_node()
    big = metrics_body(queries={f"query_{i:03d}_{'x' * 80}": {"fps": 1.0} for i in range(200)})
    small_ids = [call(client, "POST", "/api/agent/metrics", plain, metrics_body()).json()["stored"] for _ in range(3)]
    first_big = call(client, "POST", "/api/agent/metrics", plain, big).json()["stored"]
    big_size = MetricSample.objects.get(pk=first_big).payload_bytes
    assert big_size > 30_000
    settings.METRICS_RETENTION_BYTES = 3 * big_size  # room for three large reports, not for five
    ids = [call(client, "POST", "/api/agent/metrics", plain, big).json()["stored"] for _ in range(5)]
    kept = list(MetricSample.objects.filter(node=node).order_by("id").values_list("id", flat=True))
    assert kept == ids[-len(kept):] and 2 <= len(kept) <= 3 and not set(small_ids) & set(kept)
    assert sum(MetricSample.objects.filter(node=node).values_list("payload_bytes", flat=True)) <= 3 * big_size


# Hostile input (issue 15): one agent token must not break pages for everyone, nor act for another's node.


@pytest.mark.parametrize(("where", "value"), [
    (("memory", "shared_bytes"), "lots"),
    (("memory", "per_model_bytes"), [1, 2, 3]),
    (("memory", "resident_bytes"), -1),
    (("memory", "resident_bytes"), 2**70),
    (("memory", "gpu"), {"used_bytes": 1.5, "total_bytes": 2}),
    (("memory", "budget_bytes"), True),
    (("memory", "surprise"), 1),
    (("queries", "north_cars", "fps"), float("inf")),
    (("queries", "north_cars", "drop_rate"), 1.5),
    (("queries", "north_cars", "effective_accuracy"), "high"),
    (("queries", "north_cars"), "fast"),
    (("queries",), ["north_cars"]),
])
def test_it_refuses_a_malformed_metrics_report_and_stores_nothing(client, where, value):
    _, plain = agent_token_create(name="agent")
    call(client, "POST", "/api/agent/register", plain, register_body())
    body = metrics_body()
    target = body
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    response = call(client, "POST", "/api/agent/metrics", plain, body)
    assert response.status_code in (400, 422), response.content
    assert ".".join(where[1:]) in response.json()["detail"] or where[0] in response.json()["detail"]
    assert not MetricSample.objects.exists()


def test_it_refuses_non_finite_numbers_sent_as_raw_json(client):
    _, plain = agent_token_create(name="agent")
    call(client, "POST", "/api/agent/register", plain, register_body())
    raw = (b'{"node": "edge-1", "at": "2026-11-29T16:40:00Z", "memory": {}, '
           b'"queries": {"q": {"fps": NaN, "drop_rate": Infinity}}}')
    response = client.post("/api/agent/metrics", raw, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert response.status_code in (400, 422)
    assert not MetricSample.objects.exists()


def test_it_refuses_too_many_queries_and_overlong_details(client):
    _, plain = agent_token_create(name="agent")
    call(client, "POST", "/api/agent/register", plain, register_body())
    many = {f"q{i}": {"fps": 1.0} for i in range(300)}
    assert call(client, "POST", "/api/agent/metrics", plain, metrics_body(queries=many)).status_code == 400
    beat = call(client, "POST", "/api/agent/heartbeat", plain, heartbeat_body(detail="x" * 3_000_000))
    assert beat.status_code == 422
    assert "detail" in beat.json()["detail"]


def test_ids_too_large_for_the_database_answer_4xx(client):
    _, plain = agent_token_create(name="agent")
    call(client, "POST", "/api/agent/register", plain, register_body())
    assert call(client, "POST", "/api/agent/heartbeat", plain,
                heartbeat_body(active_deployment=2**70)).status_code == 422
    status = call(client, "POST", f"/api/agent/deployments/{2**70}/status", plain,
                  {"node": "edge-1", "status": "active", "detail": ""})
    assert status.status_code == 404
    assert call(client, "GET", f"/api/agent/deployments/{2**70}/files/manifest.json", plain).status_code == 404


def test_a_malformed_sample_stored_before_the_checks_cannot_break_the_pages(client, operator_client):
    _, plain = agent_token_create(name="agent")
    call(client, "POST", "/api/agent/register", plain, register_body())
    node = EdgeNode.objects.get(name="edge-1")
    from django.utils import timezone
    MetricSample.objects.create(node=node, at=timezone.now(), payload={
        "memory": {"shared_bytes": "lots", "per_model_bytes": [1, 2, 3]}, "queries": {"q": "fast"}})
    assert operator_client.get("/").status_code == 200
    samples = operator_client.get(f"/api/nodes/{node.pk}/metrics")
    assert samples.status_code == 200
    assert samples.json()[-1]["queries"] == {} and samples.json()[-1]["memory"]["shared_bytes"] == 0


def test_a_node_belongs_to_the_token_that_registered_it(client, operator):
    _, owner = agent_token_create(name="rightful")
    _, intruder = agent_token_create(name="intruder")
    assert call(client, "POST", "/api/agent/register", owner, register_body()).status_code == 200
    node = EdgeNode.objects.get(name="edge-1")
    deployment_create(bundle=make_bundle(), node=node, user=operator)

    taken = call(client, "POST", "/api/agent/register", intruder, register_body())
    assert taken.status_code == 403
    assert "another agent token" in taken.json()["detail"]
    assert call(client, "POST", "/api/agent/heartbeat", intruder, heartbeat_body()).status_code == 404
    assert call(client, "POST", "/api/agent/metrics", intruder, metrics_body()).status_code == 404
    deployment = Deployment.objects.get(node=node)
    assert call(client, "POST", f"/api/agent/deployments/{deployment.pk}/status", intruder,
                {"node": "edge-1", "status": "failed", "detail": "x"}).status_code == 404
    # The rightful agent is untouched: its heartbeat still answers the desired deployment.
    beat = call(client, "POST", "/api/agent/heartbeat", owner, heartbeat_body())
    assert beat.status_code == 200 and beat.json()["desired"]["deployment"] == deployment.pk


def test_revoking_the_owners_token_lets_a_new_token_take_the_node_over(client):
    token, old = agent_token_create(name="old box")
    _, new = agent_token_create(name="new box")
    call(client, "POST", "/api/agent/register", old, register_body())
    agent_token_revoke(token=token)
    assert call(client, "POST", "/api/agent/register", new, register_body()).status_code == 200
    assert call(client, "POST", "/api/agent/heartbeat", new, heartbeat_body()).status_code == 200
    # The node it took over is the one node it may hold.
    assert call(client, "POST", "/api/agent/register", new, register_body(node="edge-9")).status_code == 403


def test_a_node_name_with_invisible_characters_is_refused(client):
    _, plain = agent_token_create(name="agent")
    response = call(client, "POST", "/api/agent/register", plain, register_body(node="edge\u202e1"))
    assert response.status_code == 400 and "invisible" in response.json()["detail"]
    assert not EdgeNode.objects.exists()


def test_a_token_registers_one_node_and_a_second_name_gets_403_saying_why(client):
    _, plain = agent_token_create(name="edge-1")
    assert call(client, "POST", "/api/agent/register", plain, register_body()).status_code == 200
    second = call(client, "POST", "/api/agent/register", plain, register_body(node="edge-2"))
    assert second.status_code == 403
    assert "already registered node 'edge-1'" in second.json()["detail"]
    assert "create a token for 'edge-2'" in second.json()["detail"]
    assert list(EdgeNode.objects.values_list("name", flat=True)) == ["edge-1"]
    assert call(client, "POST", "/api/agent/register", plain, register_body()).status_code == 200  # its own again
