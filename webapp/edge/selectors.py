"""Reads for edge nodes, agent tokens, deployments and metric samples."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from gemel_engine.errors import BundleError, DeploymentError, GemelError
from gemel_engine.queries import Task
from gemel_engine.report import MIB
from gemel_engine.runtime.protocol import (
    CameraFeed,
    DeploymentSpec,
    MemoryReport,
    MetricsReport,
    ProtocolError,
    QuerySpec,
    bundle_model_names,
)
from webapp.edge.models import AgentToken, Deployment, EdgeNode, MetricSample
from webapp.merges.models import MergeBundle, MergeJob
from webapp.merges.selectors import (
    merge_bundle_deployable,
    merge_bundle_dir,
    merge_bundle_files,
    merge_bundle_required_now,
    merge_bundle_test_rows,
    merge_job_built_name,
)
from webapp.workloads.engine import camera_classes, camera_has_ground_truth

logger = logging.getLogger(__name__)

# Missed heartbeats after which a node counts as offline.
OFFLINE_AFTER_HEARTBEATS = 3
# Samples the monitor draws when it first opens (older ones stay in the database).
METRICS_PAGE = 600
# What a node with no (readable) sample reports.
EMPTY_REPORT = MetricsReport(memory=MemoryReport.from_json({}), queries={})
# Statuses in which a deployment is still on its way to the node.
IN_FLIGHT = (
    Deployment.Status.PENDING, Deployment.Status.DOWNLOADING, Deployment.Status.LOADING, Deployment.Status.WARMING,
)


def token_hash(token: str) -> str:
    """Return the sha256 hex digest under which the plain agent token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def agent_token_find(*, token: str) -> AgentToken | None:
    """Return the agent token whose plain text is ``token`` (revoked or not), or None when unknown."""
    if not token:
        return None
    return AgentToken.objects.filter(token_hash=token_hash(token)).first()


def agent_tokens_list() -> QuerySet[AgentToken]:
    """Return every agent token, newest first, with its site and the nodes that used it."""
    return AgentToken.objects.select_related("site").order_by("-created_at").prefetch_related("nodes")


def node_offline_after() -> timedelta:
    """Return how long a node may stay silent before it counts as offline (3 heartbeat intervals)."""
    return timedelta(seconds=OFFLINE_AFTER_HEARTBEATS * settings.AGENT_HEARTBEAT_SECONDS)


def node_is_online(node: EdgeNode, *, now: datetime | None = None) -> bool:
    """Return whether ``node`` sent a heartbeat within the last three heartbeat intervals."""
    if node.last_seen_at is None:
        return False
    return (now or timezone.now()) - node.last_seen_at <= node_offline_after()


def nodes_list() -> QuerySet[EdgeNode]:
    """Return every edge node by name, with its site, active deployment and bundle."""
    return EdgeNode.objects.select_related("site", "active_deployment__bundle").order_by("name")


def node_for_token(*, token: AgentToken, name: str) -> EdgeNode | None:
    """Return the node called ``name`` if the agent with ``token`` registered it, else None."""
    return EdgeNode.objects.filter(name=name, token=token).first()


def node_rollback_target(node: EdgeNode) -> Deployment | None:
    """Return the deployment a rollback of ``node`` would return to (the one its desired deployment replaced), or
    None when there is nothing to roll back to."""
    current = deployment_desired(node=node)
    if current is None or current.previous is None or current.previous_id == current.pk:
        return None
    return current.previous


def deployment_desired(*, node: EdgeNode) -> Deployment | None:
    """Return the node's desired deployment: its newest one that was not rolled back (None: nothing)."""
    return (
        Deployment.objects.filter(node=node)
        .exclude(status=Deployment.Status.ROLLED_BACK)
        .select_related("bundle__job")
        .order_by("-created_at", "-id")
        .first()
    )


def deployment_history(*, node: EdgeNode | None = None, limit: int = 50) -> list[Deployment]:
    """Return the newest ``limit`` deployments (of ``node`` when given) with their status histories."""
    rows = Deployment.objects.select_related("node", "bundle__job", "created_by").prefetch_related("history")
    if node is not None:
        rows = rows.filter(node=node)
    return list(rows.order_by("-created_at", "-id")[:limit])


def deployment_to_json(deployment: Deployment) -> dict[str, Any]:
    """Return what the dashboard shows of a deployment (its status and where it is going)."""
    return {
        "id": deployment.pk,
        "node": deployment.node_id,
        "bundle": deployment.bundle_id,
        "job": deployment.bundle.job_id,
        "bundle_index": deployment.bundle.index,
        "status": deployment.status,
        "detail": deployment.detail,
        "previous": deployment.previous_id,
        "created_at": deployment.created_at.isoformat() if deployment.created_at else None,
        "updated_at": deployment.updated_at.isoformat() if deployment.updated_at else None,
    }


def node_to_json(node: EdgeNode, *, now: datetime | None = None) -> dict[str, Any]:
    """Return what the dashboard shows of a node (status, online, device, active deployment)."""
    return {
        "id": node.pk,
        "name": node.name,
        "site": node.site_id,
        "status": node.status,
        "status_detail": node.status_detail,
        "online": node_is_online(node, now=now),
        "device_kind": node.device_kind,
        "device_name": node.device_name,
        "memory_total_bytes": node.memory_total_bytes,
        "budget_bytes": node.budget_bytes,
        "last_seen_at": node.last_seen_at.isoformat() if node.last_seen_at else None,
        "active_deployment": node.active_deployment_id,
    }


def bundle_folder(bundle: MergeBundle) -> Path:
    """Return the bundle's folder (absolute)."""
    return merge_bundle_dir(bundle)


def bundle_files(bundle: MergeBundle) -> list[dict[str, Any]]:
    """Return each file of ``bundle`` as {name, path, sha256, size_bytes} (the merges app's record)."""
    return [dict(item) for item in merge_bundle_files(bundle)]


def bundle_deployable(bundle: MergeBundle, required_now: dict[str, float | None] | None = None) -> tuple[bool, str]:
    """Return whether ``bundle`` may be deployed and, when not, why (every query must meet its target and
    its files must be intact; the merges app decides; ``required_now`` as ``merge_bundle_required_now`` gives
    it, when the caller has it)."""
    ok, reason = merge_bundle_deployable(bundle, required_now)
    return bool(ok), str(reason or "")


def bundle_fits_node(bundle: MergeBundle, node: EdgeNode) -> tuple[bool, str]:
    """Return whether ``node`` may serve ``bundle`` (both of one site: the bundle's queries watch that site's
    cameras) and, when not, why."""
    if bundle.job.site_id == node.site_id:
        return True, ""
    return False, (f"it was made from the queries of site {bundle.job.site.name!r}, and node {node.name!r} serves "
                   f"site {node.site.name!r}")


def _manifest_model_names(bundle: MergeBundle) -> list[str]:
    try:
        return bundle_model_names(bundle_folder(bundle))
    except BundleError:
        return []


def _bundle_model_for(query: Any, job: MergeJob, manifest_names: list[str]) -> str:
    """Return the manifest model that serves ``query``: the name the job built it under (so renaming the query
    breaks nothing), else its model entry's name when the manifest has that one."""
    built = merge_job_built_name(job, query)
    if built not in manifest_names and query.model.name in manifest_names:
        return query.model.name
    return built


def served_frames(node: EdgeNode | None) -> list[dict[str, Any]]:
    """Return, per camera of ``node``'s active deployment, the frame its feed starts from: the camera's first
    held-out test frame (``start_frame``), or None while no query on it has been measured (served from frame 0);
    and whether its live effective accuracy is measurable there (``measurable``: only frames that carry their
    ground truth to the edge box, a synthetic camera's, can be scored as they are served)."""
    if node is None or node.active_deployment_id is None:
        return []
    queries = node.active_deployment.bundle.job.queries.select_related("camera")
    cameras = {query.camera.name: query.camera for query in queries}
    return [
        {"camera": name, "start_frame": camera.test_start_frame, "measurable": camera_has_ground_truth(camera.source)}
        for name, camera in sorted(cameras.items())
    ]


def deployment_desired_json(deployment: Deployment, *, file_url: Any) -> dict[str, Any]:
    """Return the protocol's ``desired`` object for ``deployment`` (docs/agent-protocol.md §2), built by the
    engine's ``DeploymentSpec`` so the server sends exactly what the agent checks.

    ``file_url(deployment_id, name)`` returns the download path of one bundle file.

    Raises:
        DeploymentError: the stored deployment does not make a valid desired state (the reason names the field).
    """
    bundle = deployment.bundle
    files = [
        {"name": item["name"], "url": file_url(deployment.pk, item["name"]),
         "sha256": item["sha256"], "size_bytes": int(item["size_bytes"])}
        for item in bundle_files(bundle)
    ]
    manifest_names = _manifest_model_names(bundle)
    queries = []
    for query in bundle.job.queries.select_related("camera", "model").order_by("name"):
        camera = query.camera
        try:
            task = Task.from_json(query.task, vocabulary=camera_classes(camera))
        except GemelError as exc:
            raise DeploymentError(f"query {query.name!r}: {exc}") from None
        feed = CameraFeed(name=camera.name, source=camera.source, fps=float(camera.fps), width=int(camera.width),
                          height=int(camera.height), start_frame=int(camera.test_start_frame or 0))
        queries.append(QuerySpec(name=query.name, model=_bundle_model_for(query, bundle.job, manifest_names),
                                 task=task, camera=feed, slo_ms=float(query.slo_ms)))
    budget = deployment.budget_bytes if deployment.budget_bytes is not None else deployment.node.budget_bytes
    spec = DeploymentSpec(deployment=deployment.pk, queries=tuple(queries), budget_bytes=budget,
                          scheduler=deployment.scheduler)
    return {**spec.to_json(), "bundle": {"files": files}}


def deployment_file_path(*, deployment: Deployment, name: str) -> Path | None:
    """Return the path of bundle file ``name`` of ``deployment`` when it is one of the bundle's files and
    lies inside the bundle folder; else None (unknown name, path escaping the folder, file missing)."""
    folder = bundle_folder(deployment.bundle).resolve()
    for item in bundle_files(deployment.bundle):
        if item["name"] != name:
            continue
        path = Path(item.get("path") or folder / name).resolve()
        if path.parent != folder and folder not in path.parents:
            return None
        return path if path.is_file() else None
    return None


def deployments_in_flight(*, node: EdgeNode) -> QuerySet[Deployment]:
    """Return the node's deployments still on their way (pending, downloading, loading, warming)."""
    return Deployment.objects.filter(node=node, status__in=IN_FLIGHT)


def bundles_for_deployment() -> list[dict[str, Any]]:
    """Return the bundles of running or finished merge jobs, newest first, each with (deployable, reason)."""
    bundles = (
        MergeBundle.objects.filter(job__status__in=[MergeJob.Status.SUCCEEDED, MergeJob.Status.RUNNING])
        .select_related("job__site")
        .order_by("-job__created_at", "-index")
    )
    rows = []
    for bundle in bundles:
        required_now = merge_bundle_required_now(bundle)
        ok, reason = bundle_deployable(bundle, required_now)
        rows.append({"bundle": bundle, "deployable": ok, "reason": reason,
                     "tested": merge_bundle_test_rows(bundle, required_now)})
    return rows


def sample_report(sample: MetricSample | None) -> MetricsReport:
    """Return the sample's memory and queries, checked again by the protocol: a row stored before the checks
    existed, or edited by hand, reads as an empty report (and is logged) instead of breaking a page."""
    if sample is None:
        return EMPTY_REPORT
    try:
        return MetricsReport.from_json(sample.payload or {})
    except ProtocolError as exc:
        logger.warning("metric sample %s is malformed and is shown empty: %s", sample.pk, exc)
        return EMPTY_REPORT


def sample_to_json(sample: MetricSample) -> dict[str, Any]:
    """Return a metric sample as the monitor draws it (the agent's body plus id, node and timestamps)."""
    payload = sample_report(sample).to_json()
    return {
        "id": sample.pk,
        "node": sample.node_id,
        "deployment": sample.deployment_id,
        "at": sample.at.isoformat(),
        "simulated": sample.simulated,
        "resident_bytes": sample.resident_bytes,
        "shared_bytes": sample.shared_bytes,
        "gpu_used_bytes": sample.gpu_used_bytes,
        "memory": payload["memory"],
        "queries": payload["queries"],
    }


def node_metrics(*, node: EdgeNode, after: int | None = None, limit: int = METRICS_PAGE) -> list[dict[str, Any]]:
    """Return the node's samples with an id above ``after``, oldest first (at most ``limit``).

    Without ``after``, the newest ``limit`` samples.
    """
    rows = MetricSample.objects.filter(node=node)
    if after is not None:
        return [sample_to_json(s) for s in rows.filter(id__gt=after).order_by("id")[:limit]]
    newest = list(rows.order_by("-id")[:limit])
    return [sample_to_json(s) for s in reversed(newest)]


def node_latest_sample(*, node: EdgeNode) -> MetricSample | None:
    """Return the node's newest metric sample, or None."""
    return MetricSample.objects.filter(node=node).order_by("-id").first()


# A served query dropping at least this share of its frames is starved: the box cannot keep up with it.
STARVED_DROP_RATE = 0.5


def node_limit(node: EdgeNode | None) -> str | None:
    """Return what holds the node back, read from its newest sample and, only when frames are dropped, the one
    before it: memory (weights swapped in while the budget is full: memory and the host-to-device link decide),
    compute (frames dropped with nothing swapped: the models run slower than frames arrive), or None when no
    query drops frames."""
    newest = None if node is None else node_latest_sample(node=node)
    if node is None or newest is None:
        return None
    return _limit_from(node, newest, sample_report(newest))


def _limit_from(node: EdgeNode, newest: MetricSample, report: MetricsReport) -> str | None:
    """Return ``node_limit`` from the node's newest sample and its parsed ``report``, which the caller holds."""
    drops = [q.drop_rate for q in report.queries.values() if q.drop_rate is not None]
    if not drops or max(drops) < STARVED_DROP_RATE / 5:
        return None
    worst = max(drops)
    previous = MetricSample.objects.filter(node=node, id__lt=newest.pk).order_by("-id").first()
    if previous is not None:
        swapped = report.memory.swapped_bytes_total - sample_report(previous).memory.swapped_bytes_total
        if swapped > 0:
            seconds = (newest.at - previous.at).total_seconds()
            rate = f" at {swapped / seconds / MIB:.1f} MiB/s" if seconds > 0 else ""
            return (f"memory and the link: weights are swapped in{rate} while frames are dropped (up to "
                    f"{worst:.0%}); a larger budget or more sharing (a merged bundle) swaps less, a faster link "
                    "swaps quicker")
    return (f"compute: up to {worst:.0%} of frames are dropped with nothing being swapped, so the models run "
            "slower than the frames arrive; fewer fps, a faster device or lighter models would help")


def overview_nodes() -> list[dict[str, Any]]:
    """Return each node with online state and its memory now (shared vs per model, from the newest sample)."""
    now = timezone.now()
    rows = []
    for node in nodes_list().select_related("latest_sample"):
        sample = node.latest_sample
        report = sample_report(sample)
        rows.append({
            "node": node,
            "online": node_is_online(node, now=now),
            "sample": sample,
            "shared_bytes": report.memory.shared_bytes,
            "per_model_bytes": dict(report.memory.per_model_bytes),
            "budget_bytes": report.memory.budget_bytes or node.budget_bytes,
            "queries": {name: figures.to_json() for name, figures in report.queries.items()},
        })
    return rows


def overview_queries(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return every query (read-only from the workloads app) with its status and, where a node serves it,
    the node and its newest fps, drop rate and effective accuracy."""
    from webapp.workloads.models import Query

    served: dict[str, tuple[EdgeNode, dict[str, Any]]] = {}
    for row in nodes:
        for name, figures in (row["queries"] or {}).items():
            if row["online"] and isinstance(figures, dict):
                served[str(name)] = (row["node"], figures)
    rows = []
    for query in Query.objects.select_related("camera", "model").order_by("name"):
        node, figures = served.get(query.name, (None, {}))
        rows.append({"query": query, "node": node, "figures": figures, "alert": query_alert(query, figures)})
    rows.sort(key=lambda row: row["alert"] is None)  # what needs attention first
    return rows


def node_alerts(node: EdgeNode | None) -> list[dict[str, str]]:
    """Return the alerts of the queries the node serves now, as the Overview's Attention column words them
    (``query_alert`` over its newest sample): ``[{"query", "alert"}]`` by query name; empty when none needs
    attention or the node has no sample."""
    from webapp.workloads.models import Query

    if node is None:
        return []
    figures = sample_report(node_latest_sample(node=node)).queries
    alerts = []
    for query in Query.objects.filter(name__in=list(figures)).order_by("name"):
        alert = query_alert(query, figures[query.name].to_json())
        if alert is not None:
            alerts.append({"query": query.name, "alert": alert})
    return alerts


def node_attention(node: EdgeNode | None) -> dict[str, Any]:
    """Return what the monitor shows about a node's trouble, kept live by its script: ``limit`` (``node_limit``)
    and ``alerts`` (``node_alerts``)."""
    return {"limit": node_limit(node), "alerts": node_alerts(node)}


def query_alert(query: Any, figures: dict[str, Any]) -> str | None:
    """Return why a served query needs attention (starved, or its effective accuracy below the target applied to
    its unmerged model's held-out test accuracy), or None."""
    if not figures:
        return None
    drop_rate, accuracy = figures.get("drop_rate"), figures.get("effective_accuracy")
    if isinstance(drop_rate, int | float) and drop_rate >= STARVED_DROP_RATE:
        return (f"starved: {drop_rate:.0%} of its frames are dropped (the node cannot run it often enough; "
                "see what limits the node on its monitor)")
    test = query.unmerged_test or {}
    unmerged = test.get("accuracy") if isinstance(test, dict) else None
    if isinstance(accuracy, int | float) and isinstance(unmerged, int | float):
        required = query.target_fraction * unmerged
        if accuracy < required:
            return f"below target: effective accuracy {accuracy:.3f} < {required:.3f} required"
    return None


# -- the fleet: every site and box -------------------------------------------------------------------------

# Attention ranks of a box on the fleet overview, most urgent first.
ATTENTION_OFFLINE, ATTENTION_ALERT, ATTENTION_DEGRADED, ATTENTION_OK, ATTENTION_IDLE = range(5)


def _queries_by_name(names: set[str]) -> dict[str, Any]:
    from webapp.workloads.models import Query

    return {query.name: query for query in Query.objects.filter(name__in=names)}


def fleet_node_json(node: EdgeNode, queries: dict[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """Return one box as the fleet overview shows it (``node_to_json`` plus its site's name, memory in use and
    budget from its newest report, the bundle it serves, its served queries meeting their targets, their alerts,
    what limits it (``limit``) and ``attention``: an ATTENTION_* rank); ``queries`` maps query names to Query
    rows (``_queries_by_name``)."""
    report = sample_report(node.latest_sample)
    online = node_is_online(node, now=now)
    alerts = []
    measured = met = 0
    for name, figures in sorted(report.queries.items()):
        query = queries.get(name)
        alert = query_alert(query, figures.to_json()) if query is not None else None
        if alert is not None:
            alerts.append({"query": name, "alert": alert})
        if figures.effective_accuracy is not None:
            measured += 1
            met += alert is None
    deployment = node.active_deployment
    if not online:
        attention = ATTENTION_OFFLINE if deployment is not None else ATTENTION_IDLE
    elif alerts:
        attention = ATTENTION_ALERT
    elif node.status == EdgeNode.Status.DEGRADED:
        attention = ATTENTION_DEGRADED
    else:
        attention = ATTENTION_OK if deployment is not None else ATTENTION_IDLE
    return {
        **node_to_json(node, now=now),
        "site_name": node.site.name,
        "resident_bytes": report.memory.resident_bytes if node.latest_sample_id else None,
        # The driver's own figures on a GPU box (everything the process and others hold, not only weights).
        "gpu_used_bytes": report.memory.gpu.used_bytes if report.memory.gpu else None,
        "gpu_total_bytes": report.memory.gpu.total_bytes if report.memory.gpu else None,
        "memory_budget_bytes": report.memory.budget_bytes or node.budget_bytes,
        "simulated": bool(node.latest_sample and node.latest_sample.simulated),
        "sample_at": node.latest_sample.at.isoformat() if node.latest_sample else None,
        "serving": None if deployment is None else {
            "deployment": deployment.pk, "job": deployment.bundle.job_id, "config": deployment.bundle.index,
            "saved_bytes": deployment.bundle.saved_param_bytes,
        },
        "queries_served": len(report.queries),
        "queries_measured": measured,
        "queries_met": met,
        "alerts": alerts,
        # What holds an online box back when it drops frames (``node_limit``; one more read, only for such a box).
        "limit": _limit_from(node, node.latest_sample, report) if online and node.latest_sample else None,
        "attention": attention,
    }


def _fleet_nodes(ids: list[int] | None = None) -> list[EdgeNode]:
    rows = EdgeNode.objects.select_related("site", "latest_sample", "active_deployment__bundle").order_by("name")
    return list(rows if ids is None else rows.filter(pk__in=ids))


def fleet_nodes_json(ids: list[int]) -> list[dict[str, Any]]:
    """Return ``fleet_node_json`` of the boxes ``ids`` names, read fresh from the database in two queries (what
    the fleet channel sends)."""
    now = timezone.now()
    nodes = _fleet_nodes(ids)
    queries = _queries_by_name({name for node in nodes for name in sample_report(node.latest_sample).queries})
    return [fleet_node_json(node, queries, now=now) for node in nodes]


def fleet_overview() -> list[dict[str, Any]]:
    """Return every site with its boxes, the sites and boxes that need attention first: each site as
    ``{"site", "nodes": [fleet_node_json...], "attention", "online", "queries"}`` (``queries``: the number of
    queries on its cameras). Reads every box's newest report in one query."""
    from webapp.workloads.models import Query, Site

    now = timezone.now()
    nodes = _fleet_nodes()
    names = {name for node in nodes for name in sample_report(node.latest_sample).queries}
    queries = _queries_by_name(names)
    query_counts: dict[int, int] = {}
    for site_id in Query.objects.values_list("camera__site_id", flat=True):
        query_counts[site_id] = query_counts.get(site_id, 0) + 1
    by_site: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        by_site.setdefault(node.site_id, []).append(fleet_node_json(node, queries, now=now))
    sites = []
    for site in Site.objects.order_by("name"):
        rows = sorted(by_site.get(site.pk, []), key=lambda row: (row["attention"], row["name"]))
        sites.append({
            "site": site, "nodes": rows, "online": sum(row["online"] for row in rows),
            "attention": min((row["attention"] for row in rows), default=ATTENTION_IDLE),
            "queries": query_counts.get(site.pk, 0),
        })
    sites.sort(key=lambda entry: (entry["attention"], entry["site"].name))
    return sites
