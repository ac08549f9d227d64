"""Sites: cameras, boxes and merge jobs belong to one; bundles deploy only within it; the fleet overview."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from tests.webapp.test_edge_factories import make_bundle, make_node
from tests.webapp.test_merges_factories import make_ready_queries
from tests.webapp.test_workloads_factories import make_camera, make_model, make_query
from webapp.edge.models import Deployment, EdgeNode
from webapp.edge.services import deployment_create, metrics_record, node_register
from webapp.merges.models import MergeJob
from webapp.merges.services import merge_job_start
from webapp.workloads.models import DEFAULT_SITE, Site
from webapp.workloads.services import camera_update, site_create

pytestmark = pytest.mark.django_db


def _query_of_site(name: str, site: Site):
    camera = make_camera(f"{name}_camera", site=site)
    return make_query(name, camera=camera, model=make_model(f"{name}_model"), unmerged_accuracy=0.9)


def test_what_is_registered_without_a_site_is_in_the_default_site():
    query = make_ready_queries()[0]
    node, _ = make_node()
    assert query.camera.site.name == node.site.name == DEFAULT_SITE
    assert Site.objects.count() == 1


def test_a_bundle_cannot_be_deployed_to_a_box_of_another_site(operator):
    depot = site_create(name="depot")
    bundle = make_bundle(queries=[_query_of_site("depot_cars", depot)])
    elsewhere, _ = make_node("junction-box")
    with pytest.raises(ValidationError, match=r"made from the queries of site 'depot'.*serves site 'default'"):
        deployment_create(bundle=bundle, node=elsewhere, user=operator)
    assert not Deployment.objects.exists()
    own, _ = make_node("depot-box", token_name="depot-box", site=depot)
    assert deployment_create(bundle=bundle, node=own, user=operator).node == own


def test_the_api_refuses_a_deployment_to_another_sites_box_with_the_reason(operator_client):
    depot = site_create(name="depot")
    bundle = make_bundle(queries=[_query_of_site("depot_cars", depot)])
    node, _ = make_node("junction-box")
    response = operator_client.post("/api/deployments", {"bundle": bundle.pk, "node": node.pk},
                                    content_type="application/json")
    assert response.status_code == 400 and "serves site 'default'" in response.json()["detail"]
    page = operator_client.get(reverse("deployments")).content.decode()
    assert f'id="deploy-{bundle.pk}-{node.pk}"' not in page  # no button offers it
    assert "no box of site depot has registered" in page


def test_a_merge_job_is_over_the_queries_of_one_site(operator):
    depot = site_create(name="depot")
    here = make_ready_queries()
    there = _query_of_site("depot_cars", depot)
    with pytest.raises(ValidationError, match=r"one site.*2 sites \(default: q0_.*; depot: depot_cars\)"):
        merge_job_start(queries=[*here, there], strategy="gemel", budget_minutes=5, user=operator)
    assert not MergeJob.objects.exists()
    job = merge_job_start(queries=here, strategy="gemel", budget_minutes=5, user=operator)
    assert job.site.name == DEFAULT_SITE


def test_a_box_serves_the_site_of_the_token_it_registered_with():
    depot = site_create(name="depot")
    _, _ = make_node("unused")  # another token of the default site
    from webapp.edge.services import agent_token_create

    token, _ = agent_token_create(name="depot-box", site=depot)
    node = node_register(token=token, name="depot-box", device_kind="cpu", device_name="", memory_total_bytes=1,
                         budget_bytes=None, agent_version="t", active_deployment=None)
    assert node.site == depot


def test_a_camera_moves_to_another_site_only_while_no_query_watches_it():
    depot = site_create(name="depot")
    camera = make_camera("lonely")
    assert camera_update(camera=camera, site=depot).site == depot
    watched = make_ready_queries()[0].camera
    with pytest.raises(ValidationError, match="watched by queries"):
        camera_update(camera=watched, site=depot)
    watched.refresh_from_db()
    assert watched.site.name == DEFAULT_SITE


def test_site_names_are_checked_and_unique():
    site_create(name="depot")
    with pytest.raises(ValidationError, match="already taken"):
        site_create(name="depot")
    with pytest.raises(ValidationError, match="required"):
        site_create(name="  ")


def test_the_api_adds_and_lists_sites_and_registers_a_camera_into_one(operator_client):
    created = operator_client.post("/api/sites", {"name": "depot"}, content_type="application/json")
    assert created.status_code == 201
    site_id = created.json()["id"]
    assert "depot" in [s["name"] for s in operator_client.get("/api/sites").json()]
    camera = operator_client.post("/api/cameras", {"name": "gate", "site": site_id, "source": "synthetic://gate?seed=1&frames=20"},
                                  content_type="application/json")
    assert camera.status_code == 201 and camera.json()["site"] == site_id
    unknown = operator_client.post("/api/cameras", {"name": "gate2", "site": 999, "source": "synthetic://g?frames=20"},
                                   content_type="application/json")
    assert unknown.status_code == 400 and "no site with id 999" in unknown.content.decode()
    token = operator_client.post("/api/agent-tokens", {"name": "gate-box", "site": site_id},
                                 content_type="application/json")
    assert token.status_code == 201 and token.json()["site"] == site_id


def test_the_fleet_overview_shows_a_box_that_stopped_reporting_as_offline_and_first(operator_client, operator):
    depot = site_create(name="depot")
    query = _query_of_site("depot_cars", depot)
    silent, _ = make_node("silent-box", token_name="silent", site=depot)
    fine, _ = make_node("fine-box", token_name="fine", site=depot)
    for node in (silent, fine):
        deployment = deployment_create(bundle=make_bundle(queries=[query]), node=node, user=operator)
        EdgeNode.objects.filter(pk=node.pk).update(active_deployment=deployment)
        metrics_record(node=node, at=timezone.now(), deployment=deployment.pk, simulated=False,
                       memory={"resident_bytes": 40 << 20, "budget_bytes": 64 << 20},
                       queries={"depot_cars": {"fps": 5.0, "drop_rate": 0.0, "effective_accuracy": 0.9}})
    EdgeNode.objects.filter(pk=silent.pk).update(last_seen_at=timezone.now() - timedelta(minutes=5))
    page = operator_client.get(reverse("overview")).content.decode()
    table = page[page.index('id="fleet-nodes"'):]
    assert table.index("silent-box") < table.index("fine-box")  # what needs attention first
    silent_row = table[table.index(f'data-node="{silent.pk}"'):table.index(f'data-node="{fine.pk}"')]
    assert ">offline<" in silent_row and "stopped reporting while serving" in silent_row
    fine_row = table[table.index(f'data-node="{fine.pk}"'):]
    assert ">online<" in fine_row and "40.0 MiB / 64.0 MiB" in fine_row and "1 of 1" in fine_row
    assert "depot" in table and "1 of 2 boxes reporting" in table


def test_the_fleet_overview_shows_a_gpu_boxs_driver_figure_and_none_on_a_cpu_box(operator_client, operator):
    depot = site_create(name="depot")
    query = _query_of_site("depot_cars", depot)
    gpu_box, _ = make_node("gpu-box", token_name="gpu", site=depot)
    cpu_box, _ = make_node("cpu-box", token_name="cpu", site=depot)
    for node, gpu in ((gpu_box, {"used_bytes": 3 << 30, "total_bytes": 16 << 30}), (cpu_box, None)):
        deployment = deployment_create(bundle=make_bundle(queries=[query]), node=node, user=operator)
        EdgeNode.objects.filter(pk=node.pk).update(active_deployment=deployment)
        metrics_record(node=node, at=timezone.now(), deployment=deployment.pk, simulated=False,
                       memory={"resident_bytes": 40 << 20, "budget_bytes": 64 << 20, **({"gpu": gpu} if gpu else {})},
                       queries={"depot_cars": {"fps": 5.0, "drop_rate": 0.0, "effective_accuracy": 0.9}})
    table = operator_client.get(reverse("overview")).content.decode()
    table = table[table.index('id="fleet-nodes"'):]
    start, other = table.index(f'data-node="{gpu_box.pk}"'), table.index(f'data-node="{cpu_box.pk}"')
    gpu_row, cpu_row = (table[start:other], table[other:]) if start < other else (table[start:], table[other:start])
    assert "GPU 3072.0 MiB of 16384.0 MiB (driver)" in gpu_row and "(driver)" not in cpu_row


def test_sites_without_boxes_are_named_on_the_fleet_overview(viewer_client):
    site_create(name="warehouse")
    page = viewer_client.get(reverse("overview")).content.decode()
    assert "Sites without boxes yet: " in page and "warehouse (0 queries)" in page


def test_an_operator_adds_a_site_in_the_browser(operator_client):
    response = operator_client.post(reverse("site_create"), {"name": "depot"})
    assert response.status_code == 302 and Site.objects.filter(name="depot").exists()
    refused = operator_client.post(reverse("site_create"), {"name": "depot"})
    assert refused.status_code == 400 and "already taken" in refused.content.decode()


@pytest.mark.django_db(transaction=True)
def test_cameras_boxes_tokens_and_jobs_from_before_sites_move_to_the_default_site():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("workloads", "0008_training_run"), ("merges", "0005_accept_confidence"),
              ("edge", "0002_sample_payload_bytes")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    camera = old.get_model("workloads", "Camera").objects.create(name="north", source="synthetic://n")
    model = old.get_model("workloads", "ModelEntry").objects.create(name="m", arch="resnet18")
    query = old.get_model("workloads", "Query").objects.create(name="q", camera=camera, model=model, task={})
    job = old.get_model("merges", "MergeJob").objects.create()
    job.queries.set([query])
    token = old.get_model("edge", "AgentToken").objects.create(name="t", token_hash="h", prefix="p")
    node = old.get_model("edge", "EdgeNode").objects.create(name="box", token=token)
    sample = old.get_model("edge", "MetricSample").objects.create(node=node, at=timezone.now())

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    site = Site.objects.get()
    assert site.name == DEFAULT_SITE
    assert site.cameras.get().name == "north" and site.nodes.get().name == "box"
    assert site.agent_tokens.get().name == "t" and site.merge_jobs.get().pk == job.pk
    assert EdgeNode.objects.get().latest_sample_id == sample.pk
