"""Faults across the live stack, seen from the browser: Redis goes away and comes back."""

from __future__ import annotations

from tests.e2e.conftest import AGENT_NODE, OPERATOR, sign_in
from tests.e2e.test_operator_story import SOURCE
from tests.waiting import wait_until
from tests.webapp.test_workloads_factories import write_weights


def _points(page) -> int:
    return int(page.get_attribute("#memory-chart", "data-points") or 0)


def test_after_a_redis_restart_the_browser_catches_up_and_workers_take_new_tasks(live_stack, browser, tmp_path):
    from webapp.edge.models import EdgeNode, MetricSample
    from webapp.workloads.models import Query
    from webapp.workloads.services import camera_register, model_register_file, query_create

    live_stack.wait_for_agent(timeout=60)
    node = EdgeNode.objects.get(name=AGENT_NODE)
    page = sign_in(browser, live_stack, OPERATOR)
    page.goto(f"{live_stack.url}monitor/?node={node.pk}")
    page.evaluate("window.__sameDocument = true")
    wait_until(lambda: _points(page) >= 2, timeout=60, what="live memory points before the restart")

    outage_started = MetricSample.objects.filter(node=node).order_by("-id").values_list("id", flat=True).first()
    # Redis stays down until the agent has reported twice through the API into the database: the outage lasts
    # as long as it takes on this machine, and ends only once the DB holds samples the websocket never carried.
    live_stack.restart_redis(
        down_until=lambda: MetricSample.objects.filter(node=node, id__gt=outage_started).count() >= 2,
        what="the agent to keep reporting to the database while Redis is down",
    )

    # The page reconnects and draws, from the API, the samples its websocket never delivered.
    drawn_before = _points(page)
    stored = MetricSample.objects.filter(node=node, id__gt=outage_started).count()
    wait_until(lambda: _points(page) >= drawn_before + stored - 1 and "live" in page.inner_text("#conn"),
          timeout=90, what="the monitor to reconnect and catch up")
    seen = _points(page)
    wait_until(lambda: _points(page) > seen + 2, timeout=60, what="live points over the new connection")
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

    # The worker reconnected to the broker: a query registered now is measured.
    camera = camera_register(name="after-restart", source=SOURCE, fps=5, width=32, height=32)
    model = model_register_file(
        name="after-restart", arch="mobilenet_v3_small", path=write_weights(tmp_path / "w.safetensors"),
        builder_args={"num_classes": 2},
    )
    query = query_create(name="after_restart", camera=camera, model=model,
                         task={"kind": "presence", "classes": ["car"]})
    wait_until(lambda: Query.objects.get(pk=query.pk).status in ("ready", "failed"), timeout=180,
          what="the worker to measure the new query", every=1.0)
    assert Query.objects.get(pk=query.pk).status == "ready", Query.objects.get(pk=query.pk).status_detail
