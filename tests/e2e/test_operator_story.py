"""An operator's whole day in a real browser, on the live stack: sign in, register a camera and two models,
analyse them, merge them while the savings chart grows over the websocket, deploy to the edge agent, watch
the node's memory drop, and roll back. A screenshot of each page is saved for CI and the README."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import AGENT_NODE, OPERATOR, VIEWER, LiveStack, sign_in
from tests.waiting import wait_until
from tests.webapp.test_workloads_factories import write_weights

HOSTILE = '<img src=x onerror="window.__xss=1">'
CAMERA = f"north {HOSTILE}"
SOURCE = "synthetic://north?seed=1&width=64&height=48&fps=5&frames=200&time_scale=20&start_hour=9"



def _shot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _points(page, chart: str) -> int:
    return int(page.get_attribute(chart, "data-points") or 0)


def _register_model(page, stack: LiveStack, tmp_path: Path, name: str, seed: int) -> None:
    weights = write_weights(tmp_path / f"{name}.safetensors", arch="mobilenet_v3_small", seed=seed)
    page.goto(f"{stack.url}models/new/")
    page.fill("#id_name", name)
    page.select_option("#id_arch", "mobilenet_v3_small")
    page.fill("#id_builder_args", '{"num_classes": 2}')
    page.set_input_files("#id_weights", str(weights))
    page.click("#submit")
    page.wait_for_url(f"{stack.url}cameras/")


def _create_query(page, stack: LiveStack, name: str, model: str) -> None:
    page.goto(f"{stack.url}queries/new/")
    page.fill("#id_name", name)
    page.select_option("#id_camera", label=CAMERA)
    page.select_option("#id_model", label=model)
    page.select_option("#id_kind", "presence")
    page.check("input[name=classes][value=car]")
    # Untrained models on a short camera: a loose target, so that a merged bundle also holds on the 40 held-out
    # test frames and the story can deploy it (the gate itself is tested in tests/webapp).
    page.fill("#id_target_fraction", "0.8")
    page.fill("#id_slo_ms", "500")
    page.click("#submit")
    page.wait_for_url(f"{stack.url}cameras/")


def _active_bundle(node_name: str) -> int | None:
    from webapp.edge.models import EdgeNode

    node = EdgeNode.objects.select_related("active_deployment").get(name=node_name)
    deployment = node.active_deployment
    return deployment.bundle_id if deployment and deployment.status == "active" else None


def _latest_resident_bytes(page, node_id: int) -> int:
    samples = page.evaluate(f"gemel.api('GET', '/api/nodes/{node_id}/metrics')")
    return int(samples[-1]["resident_bytes"]) if samples else 0


def test_an_operator_merges_and_deploys_from_the_browser(
    live_stack, browser, screenshot_dir, tmp_path
):
    stack = live_stack
    page = sign_in(browser, stack, OPERATOR)
    page.on("dialog", lambda dialog: dialog.accept())
    _shot(page, screenshot_dir, "01-overview")

    # Register a synthetic camera whose name carries markup: it must render as text everywhere.
    page.goto(f"{stack.url}cameras/new/")
    page.fill("#id_name", CAMERA)
    page.fill("#id_source", SOURCE)
    page.fill("#id_fps", "5")
    page.fill("#id_width", "32")
    page.fill("#id_height", "32")
    page.click("#submit")
    page.wait_for_url(f"{stack.url}cameras/")
    assert CAMERA in page.inner_text("#cameras-table")
    assert page.evaluate("document.querySelector('#cameras-table img.thumb').naturalWidth") > 0

    _register_model(page, stack, tmp_path, "gate-a", seed=1)
    _register_model(page, stack, tmp_path, "gate-b", seed=2)
    _create_query(page, stack, "north_a", "gate-a")
    _create_query(page, stack, "north_b", "gate-b")

    def queries_ready() -> bool:
        page.reload()
        statuses = page.locator("#queries-table tbody tr").all_inner_texts()
        assert not any("failed" in row for row in statuses), statuses
        return len(statuses) == 2 and all("ready" in row for row in statuses)

    wait_until(queries_ready, timeout=240, what="both queries measured by the worker", every=2)
    _shot(page, screenshot_dir, "02-cameras-and-models")

    page.goto(f"{stack.url}analysis/")
    page.click("#run-analysis")
    page.wait_for_selector("#bytes-chart .main-svg", timeout=60_000)
    page.wait_for_selector("#signatures-chart .main-svg", timeout=60_000)
    _shot(page, screenshot_dir, "03-analysis")

    # Start a merge; the savings chart must grow over the websocket without the page reloading.
    page.goto(f"{stack.url}merges/")
    page.check("#id_all_ready")
    page.select_option("#id_strategy", "gemel")
    page.fill("#id_budget_minutes", "3")
    page.click("#start-job")
    page.wait_for_url(f"{stack.url}merges/*/")
    page.evaluate("window.__sameDocument = true")
    first = _points(page, "#savings-chart")
    wait_until(lambda: _points(page, "#savings-chart") > first, timeout=240,
               what="a new savings point over the websocket")
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    wait_until(lambda: page.get_attribute("#job-status", "data-status") in ("succeeded", "failed", "cancelled"),
          timeout=420, what="the merge job to finish", every=1.0)
    assert page.get_attribute("#job-status", "data-status") == "succeeded", page.inner_text("#job-error")
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    _shot(page, screenshot_dir, "04-merge-job")

    from webapp.edge.models import EdgeNode
    from webapp.merges.models import MergeBundle, MergeJob

    job = MergeJob.objects.latest("created_at")
    bundles = list(MergeBundle.objects.filter(job=job).order_by("index"))
    # The agent registers again on its own when a previous test's flush removed its node and token.
    stack.wait_for_agent(timeout=90)
    node = EdgeNode.objects.get(name=AGENT_NODE)
    assert len(bundles) >= 2, "the search accepted no merged configuration"
    # The deploy gate reads held-out test frames, which the search never saw: deploy the latest merged
    # configuration that holds there.
    from webapp.merges.selectors import merge_bundle_deployable

    holding = [bundle for bundle in bundles[1:] if merge_bundle_deployable(bundle)[0]]
    assert holding, [merge_bundle_deployable(bundle)[1] for bundle in bundles[1:]]
    unmerged, merged = bundles[0], holding[-1]
    assert merge_bundle_deployable(unmerged)[0] and merged.saved_param_bytes > 0

    # Deploy the unmerged configuration, then the merged one: the node's memory chart drops.
    page.goto(f"{stack.url}deployments/")
    page.click(f"#deploy-{unmerged.pk}-{node.pk}")
    wait_until(lambda: _active_bundle(AGENT_NODE) == unmerged.pk, timeout=180, what="the unmerged bundle active",
               context=stack.agent_report)
    monitor = sign_in(browser, stack, OPERATOR)
    monitor.goto(f"{stack.url}monitor/?node={node.pk}")
    monitor.evaluate("window.__sameDocument = true")
    wait_until(lambda: _points(monitor, "#memory-chart") >= 2, timeout=60, what="memory points on the monitor")
    before = _latest_resident_bytes(monitor, node.pk)

    page.click(f"#deploy-{merged.pk}-{node.pk}")
    wait_until(lambda: _active_bundle(AGENT_NODE) == merged.pk, timeout=180, what="the merged bundle active",
               context=stack.agent_report)
    wait_until(lambda: 0 < _latest_resident_bytes(monitor, node.pk) < before, timeout=60, what="the memory to drop")
    seen = _points(monitor, "#memory-chart")
    wait_until(lambda: _points(monitor, "#memory-chart") > seen + 2, timeout=60, what="live memory points")
    assert monitor.evaluate("window.__sameDocument === true"), "the monitor reloaded"
    _shot(monitor, screenshot_dir, "05-monitor")
    page.reload()
    _shot(page, screenshot_dir, "06-deployments")

    page.click(f"#rollback-{node.pk}")
    wait_until(lambda: _active_bundle(AGENT_NODE) == unmerged.pk, timeout=180, what="the rollback to unmerged",
               context=stack.agent_report)

    # Nothing the operator typed ran as script on any page.
    for path in ("", "cameras/", "analysis/", f"merges/{job.pk}/", "deployments/", f"monitor/?node={node.pk}"):
        page.goto(f"{stack.url}{path}")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss === undefined"), path

    # A viewer sees the same pages but cannot deploy.
    viewer = sign_in(browser, stack, VIEWER)
    viewer.goto(f"{stack.url}deployments/")
    assert viewer.is_disabled(f"#deploy-{merged.pk}-{node.pk}")
    status = viewer.evaluate(
        f"fetch('/api/deployments', {{method: 'POST', headers: {{'Content-Type': 'application/json', "
        f"'X-CSRFToken': gemel.cookie('csrftoken')}}, body: JSON.stringify({{bundle: {merged.pk}, node: {node.pk}}})}})"
        ".then(r => r.status)"
    )
    assert status == 403
