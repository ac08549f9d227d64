"""Overview, deployments and monitor pages, the operator API, and who may do what."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse

from tests.webapp.test_edge_factories import make_bundle, make_node, make_query
from tests.webapp.test_workloads_factories import measured
from webapp.edge import selectors
from webapp.edge.models import AgentToken, Deployment, EdgeNode, MetricSample
from webapp.edge.services import deployment_create, deployment_report_status, metrics_record

pytestmark = pytest.mark.django_db
EVIL = '<script>alert("x")</script>'


def test_it_shows_deploy_buttons_per_bundle_and_node(operator_client):
    node, _ = make_node()
    bundle = make_bundle()
    page = operator_client.get(reverse("deployments")).content.decode()
    assert f'id="deploy-{bundle.pk}-{node.pk}"' in page
    assert f'id="rollback-{node.pk}"' in page
    assert 'id="deployment-status"' in page


def test_it_disables_the_deploy_button_and_says_why_for_a_bundle_below_target(operator_client):
    node, _ = make_node()
    bundle = make_bundle(meets=False)
    page = operator_client.get(reverse("deployments")).content.decode()
    button = page[page.index(f'id="deploy-{bundle.pk}-{node.pk}"'):]
    assert "disabled" in button[: button.index(">")]
    assert "accuracy target" in page or "not deployable" in page


def test_it_renders_node_and_camera_names_as_text(operator_client):
    node, _ = make_node(EVIL)
    make_query(camera=EVIL)
    deployment = deployment_create(bundle=make_bundle(), node=node, user=None)
    deployment_report_status(deployment=deployment, status="failed", detail=EVIL)
    from django.utils import timezone

    metrics_record(node=node, at=timezone.now(), deployment=None, simulated=True,
                   memory={"resident_bytes": 6, "shared_bytes": 1, "per_model_bytes": {EVIL: 5}}, queries={})
    for name in ("overview", "deployments", "monitor"):
        page = operator_client.get(reverse(name)).content.decode()
        assert EVIL not in page, name
        assert "&lt;script&gt;" in page or "\\u003Cscript\\u003E" in page, name


def test_it_lets_an_operator_deploy_and_roll_back_through_the_api(operator_client):
    node, _ = make_node()
    first = make_bundle()
    response = operator_client.post("/api/deployments", {"bundle": first.pk, "node": node.pk},
                                    content_type="application/json")
    assert response.status_code == 201
    deployment_report_status(deployment=Deployment.objects.get(pk=response.json()["id"]), status="active", detail="")
    second = operator_client.post("/api/deployments", {"bundle": make_bundle().pk, "node": node.pk},
                                  content_type="application/json").json()
    deployment_report_status(deployment=Deployment.objects.get(pk=second["id"]), status="active", detail="")
    back = operator_client.post(f"/api/nodes/{node.pk}/rollback")
    assert back.status_code == 201
    assert back.json()["bundle"] == first.pk


def test_it_answers_the_reason_when_a_deploy_is_refused(operator_client):
    node, _ = make_node()
    response = operator_client.post("/api/deployments", {"bundle": make_bundle(meets=False).pk, "node": node.pk},
                                    content_type="application/json")
    assert response.status_code == 400
    assert "cannot be deployed" in response.json()["detail"]


def test_it_forbids_a_viewer_to_deploy_roll_back_or_create_tokens(viewer_client):
    node, _ = make_node()
    bundle = make_bundle()
    assert viewer_client.post("/api/deployments", {"bundle": bundle.pk, "node": node.pk},
                              content_type="application/json").status_code == 403
    assert viewer_client.post(f"/api/nodes/{node.pk}/rollback").status_code == 403
    assert viewer_client.post("/api/agent-tokens", {"name": "x"}, content_type="application/json").status_code == 403
    assert viewer_client.get("/api/agent-tokens").status_code == 403
    assert not Deployment.objects.exists() and AgentToken.objects.count() == 1
    page = viewer_client.get(reverse("deployments")).content.decode()
    assert 'id="token-form"' not in page
    button = page[page.index(f'id="deploy-{bundle.pk}-{node.pk}"'):]
    assert "disabled" in button[: button.index(">")]


def test_it_creates_a_token_shown_once_for_an_operator(operator_client):
    response = operator_client.post("/api/agent-tokens", {"name": "edge-7"}, content_type="application/json")
    assert response.status_code == 201
    plain = response.json()["token"]
    listed = operator_client.get("/api/agent-tokens").json()
    assert listed[0]["name"] == "edge-7" and "token" not in listed[0]
    assert plain not in operator_client.get(reverse("deployments")).content.decode()


def test_it_catches_the_monitor_up_from_the_metrics_api(viewer_client):
    from django.utils import timezone

    node, _ = make_node()
    ids = [metrics_record(node=node, at=timezone.now(), deployment=None, simulated=True,
                          memory={"resident_bytes": i}, queries={}).pk for i in range(3)]
    response = viewer_client.get(f"/api/nodes/{node.pk}/metrics", {"after": ids[0]})
    assert [s["id"] for s in response.json()] == ids[1:]
    page = viewer_client.get(reverse("monitor"), {"node": node.pk}).content.decode()
    assert 'id="memory-chart"' in page and 'data-points="0"' in page and 'id="fps-chart"' in page


def test_it_shows_nodes_online_and_offline_on_the_overview(viewer_client):
    from django.utils import timezone

    EdgeNode.objects.create(name="fresh", last_seen_at=timezone.now())
    EdgeNode.objects.create(name="silent")
    page = viewer_client.get(reverse("overview")).content.decode()
    assert page.count(">online<") == 1 and page.count(">offline<") == 1


def test_raising_a_target_above_a_bundles_accuracy_stops_its_deployment_at_once(operator_client):
    from webapp.workloads.services import query_update

    node, _ = make_node()
    query = make_query()
    query.unmerged_accuracy, query.unmerged_test = 0.92, measured(0.92)  # target 0.95 × 0.92 = 0.874: 0.9 meets it
    query.save()
    bundle = make_bundle(queries=[query])
    assert operator_client.get(reverse("deployments")).context["bundles"][0]["deployable"]

    query_update(query=query, target_fraction=1.0)  # 0.92 now: the bundle's 0.9 misses it by 0.02
    row = operator_client.get(reverse("deployments")).context["bundles"][0]
    assert not row["deployable"] and "north_cars: test accuracy 0.900" in row["reason"]
    assert "below its target 0.920" in row["reason"]
    assert "short by 0.020" in row["reason"]
    response = operator_client.post("/api/deployments", {"bundle": bundle.pk, "node": node.pk},
                                    content_type="application/json")
    assert response.status_code == 400 and "north_cars" in response.json()["detail"]
    assert not Deployment.objects.exists()
    assert operator_client.get(f"/api/merge-jobs/{bundle.job_id}/bundles").json()[0]["meets_targets"] is False


def test_renaming_a_query_keeps_its_bundles_deployable_and_addressed_by_their_own_names(operator_client):
    from webapp.edge.selectors import deployment_desired_json
    from webapp.workloads.services import query_update

    node, _ = make_node()
    query = make_query()  # "north_cars", the name the fake bundle's manifest gives its model
    bundle = make_bundle(queries=[query])
    bundle.job.query_names = {str(query.pk): "north_cars"}
    bundle.job.save()
    query_update(query=query, name="north_vehicles")

    deployment = deployment_create(bundle=bundle, node=node, user=None)
    [served] = deployment_desired_json(deployment, file_url=lambda pk, name: name)["queries"]
    assert served["name"] == "north_vehicles" and served["model"] == "north_cars"


def test_a_budget_or_id_past_what_the_database_holds_answers_422(operator_client):
    node, _ = make_node()
    bundle = make_bundle()
    for body in ({"bundle": bundle.pk, "node": node.pk, "budget_bytes": 2**70},
                 {"bundle": 2**70, "node": node.pk}, {"bundle": bundle.pk, "node": node.pk, "budget_bytes": 0}):
        response = operator_client.post("/api/deployments", body, content_type="application/json")
        assert response.status_code == 422, (body, response.content)
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("asked", ["²", "٣", "1_0", " 1", "-1", "abc", str(2**70)])
def test_a_monitor_asked_for_a_node_that_is_no_id_answers_404(viewer_client, asked):
    make_node()
    response = viewer_client.get(reverse("monitor"), {"node": asked})
    assert response.status_code == 404


def test_a_monitor_asked_for_no_node_shows_the_first_and_for_an_unknown_id_answers_404(viewer_client):
    node, _ = make_node()
    assert viewer_client.get(reverse("monitor")).context["node"] == node
    assert viewer_client.get(reverse("monitor"), {"node": node.pk + 1}).status_code == 404


def test_the_overview_flags_a_starved_query_and_one_below_its_target_first(operator_client):
    from django.utils import timezone

    node, _ = make_node()
    starved, low, fine = make_query("a_starved"), make_query("b_low", camera="east", seed=2), make_query("c_fine")
    node.last_seen_at = timezone.now()
    node.save()
    required = low.target_fraction * low.unmerged_test["accuracy"]
    metrics_record(node=node, at=timezone.now(), deployment=None, simulated=True,
                   memory={"resident_bytes": 6, "shared_bytes": 1, "per_model_bytes": {}},
                   queries={"a_starved": {"fps": 0.0, "drop_rate": 0.97, "effective_accuracy": 0.2},
                            "b_low": {"fps": 5.0, "drop_rate": 0.01, "effective_accuracy": round(required - 0.05, 3)},
                            "c_fine": {"fps": 5.0, "drop_rate": 0.01, "effective_accuracy": 0.95}})
    page = operator_client.get(reverse("overview")).content.decode()
    assert "starved: 97% of its frames are dropped" in page
    assert f"below target: effective accuracy {required - 0.05:.3f} &lt; {required:.3f} required" in page
    table = page[page.index('id="overview-queries"'):]
    assert table.index("c_fine") > table.index("a_starved") and table.index("c_fine") > table.index("b_low")
    assert fine.name in table and starved.name in table


def test_the_monitor_shows_the_overviews_alerts_beside_what_limits_the_node_and_serves_them_live(operator_client):
    from django.test import Client
    from django.utils import timezone

    node, _ = make_node()
    starved, low = make_query("a_starved"), make_query("b_low", camera="east", seed=2)
    make_query("c_fine", camera="west", seed=3)
    required = low.target_fraction * low.unmerged_test["accuracy"]
    url = reverse("monitor_attention", args=[node.pk])
    assert operator_client.get(url).json() == {"limit": None, "alerts": []}  # no sample yet
    page = operator_client.get(reverse("monitor"), {"node": node.pk}).content.decode()
    assert '<section class="card" id="node-attention" hidden>' in page and url in page  # the script's address
    metrics_record(node=node, at=timezone.now(), deployment=None, simulated=True,
                   memory={"resident_bytes": 6, "shared_bytes": 1, "per_model_bytes": {}},
                   queries={"a_starved": {"fps": 0.0, "drop_rate": 0.97, "effective_accuracy": 0.2},
                            "b_low": {"fps": 5.0, "drop_rate": 0.01, "effective_accuracy": round(required - 0.05, 3)},
                            "c_fine": {"fps": 5.0, "drop_rate": 0.01, "effective_accuracy": 0.95}})
    page = operator_client.get(reverse("monitor"), {"node": node.pk}).content.decode()
    card = page[page.index('id="node-attention"'):page.index("</section>", page.index('id="node-attention"'))]
    assert 'id="node-limit"' in card and "compute: up to 97%" in card  # what limits it, beside the alerts
    assert f'<li class="error" data-query="{starved.name}"><strong>a_starved</strong>: starved: 97%' in card
    assert f"below target: effective accuracy {required - 0.05:.3f} &lt; {required:.3f} required" in card
    assert "c_fine" not in card
    live = operator_client.get(url).json()
    assert [a["query"] for a in live["alerts"]] == ["a_starved", "b_low"] and live["limit"].startswith("compute")
    assert Client().get(url).status_code in (302, 401, 403)  # signed-in users only
    assert operator_client.get(reverse("monitor_attention", args=[node.pk + 99])).status_code == 404


def test_the_monitor_says_whether_memory_or_compute_limits_a_node(operator_client):
    from django.utils import timezone

    node, _ = make_node()
    make_query()

    start = timezone.now()

    def report(swapped: int, drop_rate: float) -> None:
        at = start + timedelta(seconds=2 * MetricSample.objects.filter(node=node).count())  # a report every 2 s
        metrics_record(node=node, at=at, deployment=None, simulated=True,
                       memory={"resident_bytes": 6, "shared_bytes": 1, "per_model_bytes": {},
                               "swapped_bytes_total": swapped},
                       queries={"north_cars": {"fps": 1.0, "drop_rate": drop_rate, "effective_accuracy": 0.5}})

    def limit() -> str:
        page = operator_client.get(reverse("monitor"), {"node": node.pk}).content.decode()
        return "" if '<p id="node-limit" hidden>' in page else page[page.index('id="node-limit"'):]

    report(1000, 0.0)
    assert limit() == ""  # nothing dropped: nothing to explain
    report(1000, 0.6)
    assert limit().startswith('id="node-limit"><strong>What limits this node now:</strong> '
                              '<span data-field="limit">compute: up to 60%')
    report(1000 + 4 * (1 << 20), 0.6)  # 4 MiB in 2 s
    assert "memory and the link: weights are swapped in at 2.0 MiB/s while frames are dropped" in limit()
    # The Overview's fleet row says it too, and so does the summary its live table is kept with.
    overview = operator_client.get(reverse("overview")).content.decode()
    row = overview[overview.index(f'<tr data-node="{node.pk}"'):]
    row = row[:row.index("</tr>")]
    assert '<span class="muted node-limit">limited by memory and the link: weights are swapped in at 2.0 MiB/s' in row
    [summary] = selectors.fleet_nodes_json([node.pk])
    assert summary["limit"].startswith("memory and the link")


def test_every_page_that_shows_figures_explains_its_terms(operator_client):
    make_node()
    make_bundle()  # a query and a bundle, so the tables with those columns are drawn
    for name in ("overview", "deployments", "monitor", "cameras", "analysis", "merge_jobs"):
        page = operator_client.get(reverse(name)).content.decode()
        assert 'id="glossary"' in page, name
        for term in ("Effective accuracy", "Drop rate", "Shared vs per model", "Simulated", "Chance", "held-out test"):
            assert term in page, (name, term)
        # The search's time budget is told apart from the runtime's memory budget.
        assert '<dt id="term-time-budget">Time budget</dt>' in page and "minutes a merge search may run" in page
        assert '<dt id="term-memory-budget">Memory budget</dt>' in page
    headers = {
        "overview": ("Drop rate", "Effective accuracy"), "cameras": ("Chance", "Target"), "deployments": ("Saved",),
        "merge_jobs": ("Saved",),
    }
    for name, terms in headers.items():
        page = operator_client.get(reverse(name)).content.decode()
        for term in terms:  # a column named by a glossary term says what it means on hover
            assert re.search(rf'<th title="[^"]*glossary[^"]*">{term}</th>', page), (name, term)


def test_pages_show_bytes_in_mib_and_shares_in_percent():
    from webapp.units import mib, percent

    assert mib(44_668_928) == "42.6 MiB" and mib(None) == "—" and mib(float("nan")) == "—" and mib(True) == "—"
    assert percent(0.329) == "32.9%" and percent(1) == "100.0%" and percent("x") == "—"


def test_the_overview_writes_memory_in_mib_and_drops_in_percent(operator_client):
    from django.utils import timezone

    node, _ = make_node()
    make_query()
    node.last_seen_at = timezone.now()
    node.save()
    metrics_record(node=node, at=timezone.now(), deployment=None, simulated=False,
                   memory={"resident_bytes": 44_668_928, "shared_bytes": 0, "per_model_bytes": {}},
                   queries={"north_cars": {"fps": 5.0, "drop_rate": 0.329, "effective_accuracy": 0.9}})
    page = operator_client.get(reverse("overview")).content.decode()
    assert "42.6 MiB" in page and "32.9%" in page and " MB" not in page


def _button(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return page[page.rindex("<", 0, start): page.index(">", start)]


def test_deploy_buttons_skip_offline_nodes_mark_what_is_served_and_rollback_needs_a_target(operator_client):
    from django.utils import timezone

    online, _ = make_node("edge-1", token_name="t1")
    offline, _ = make_node("edge-2", token_name="t2")
    EdgeNode.objects.filter(pk=online.pk).update(last_seen_at=timezone.now())
    first, second = make_bundle(), make_bundle()
    page = operator_client.get(reverse("deployments")).content.decode()
    assert "disabled" not in _button(page, f"deploy-{first.pk}-{online.pk}")
    assert "edge-2 is offline" in _button(page, f"deploy-{first.pk}-{offline.pk}")
    assert "nothing to roll back to" in _button(page, f"rollback-{online.pk}")

    for bundle in (first, second):
        deployment = deployment_create(bundle=bundle, node=online, user=None)
        deployment_report_status(deployment=deployment, status="active", detail="")
    EdgeNode.objects.filter(pk=online.pk).update(last_seen_at=timezone.now())
    page = operator_client.get(reverse("deployments")).content.decode()
    assert f'id="serving-{second.pk}-{online.pk}"' in page and f'id="deploy-{second.pk}-{online.pk}"' not in page
    assert "disabled" not in _button(page, f"deploy-{first.pk}-{online.pk}")
    rollback = _button(page, f"rollback-{online.pk}")
    assert "disabled" not in rollback and "back to the bundle of deployment" in rollback
    assert f'id="rollback-error-{online.pk}"' in page  # its errors appear beside it
    # Like deploy, rollback asks first, naming what the node goes back to.
    previous = Deployment.objects.order_by("id").first()
    assert (f'data-confirm="Roll edge-1 back to the bundle of deployment #{previous.pk} '
            f'(job {first.job_id} config {first.index})?') in rollback
    assert 'data-node-name="edge-1"' in rollback
    assert f'<tr id="bundle-{first.pk}">' in page and f'<tr id="bundle-{second.pk}">' in page  # job pages link here


def test_a_job_page_links_to_its_best_configuration_on_the_deployments_page(operator_client):
    from webapp.merges.models import MergeBundle

    best = make_bundle()
    job = best.job
    below = make_bundle(job=job, meets=False)  # the newest, but below target: not the one to deploy
    MergeBundle.objects.filter(pk=below.pk).update(saved_param_bytes=2 << 20)
    page = operator_client.get(reverse("merge_job_detail", args=[job.pk])).content.decode()
    link = page[page.rindex("<", 0, page.index('id="best-bundle-link"')):]
    assert f'href="{reverse("deployments")}#bundle-{best.pk}"' in link.split(">", 1)[0]
    assert f"config {best.index}, 1.0 MiB saved" in page
    deployments = operator_client.get(reverse("deployments")).content.decode()
    assert f'<tr id="bundle-{best.pk}">' in deployments  # the anchor it points at

    nothing = make_bundle(meets=False)
    page = operator_client.get(reverse("merge_job_detail", args=[nothing.job_id])).content.decode()
    assert '<p id="best-bundle" hidden>' in page


def test_the_monitor_says_live_accuracy_is_not_measurable_for_a_camera_without_labels_on_the_edge(operator_client):
    from webapp.workloads.models import Camera

    node, _ = make_node()
    street = make_query("street_people", camera="street")
    Camera.objects.filter(name="street").update(source="rtsp://10.0.0.5/stream")
    bundle = make_bundle(queries=[make_query(), street])
    deployment = Deployment.objects.create(node=node, bundle=bundle, status=Deployment.Status.ACTIVE)
    EdgeNode.objects.filter(pk=node.pk).update(active_deployment=deployment)
    page = operator_client.get(reverse("monitor"), {"node": node.pk}).content.decode()
    notes = re.findall(r'<p class="muted not-measurable" data-camera="([^"]+)">', page)
    assert notes == ["street"]
    assert "its frames reach the edge box without labels" in page
