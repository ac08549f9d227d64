"""Writes for the edge: agent tokens, nodes (as agents register and beat), deployments and metric samples.

Every change the dashboard should see live goes to the channel-layer groups ``nodes`` (all nodes) and
``node-<id>`` after the transaction commits.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, F, Q, Sum, Window
from django.utils import timezone

from gemel_engine.runtime.protocol import MetricsReport, ProtocolError, list_schedulers
from webapp.edge import selectors
from webapp.edge.models import AgentToken, Deployment, DeploymentStatusChange, EdgeNode, MetricSample
from webapp.errors import Conflict
from webapp.live import claim_period, group_send_now, group_send_on_commit
from webapp.merges.models import MergeBundle
from webapp.names import clean_name
from webapp.workloads.models import Site
from webapp.workloads.services import site_or_default

logger = logging.getLogger(__name__)

ALL_NODES_GROUP = "nodes"
# The period whose first report sends the fleet channel's summary (webapp.live.claim_period).
FLEET_SUMMARY_PERIOD = "fleet-summary"
# Statuses an agent may report for a deployment (docs/agent-protocol.md §4).
REPORTABLE = (
    Deployment.Status.DOWNLOADING, Deployment.Status.LOADING, Deployment.Status.WARMING,
    Deployment.Status.ACTIVE, Deployment.Status.FAILED,
)
# Statuses the server gave a deployment that an agent's late report does not undo.
SETTLED_BY_SERVER = (Deployment.Status.ROLLED_BACK, Deployment.Status.SUPERSEDED)
# Nodes one agent token may register: a token is one box's credential (docs/agent-protocol.md §1), so a
# leaked or misused token cannot fill the dashboard with nodes.
NODES_PER_TOKEN = 1
# Status changes kept per deployment, the newest: an agent reporting in a loop cannot grow the history (and
# the deployments page and API, which show all of it) without end.
DEPLOYMENT_HISTORY_KEPT = 50


def node_group(node_id: int) -> str:
    """Return the channel-layer group of one node's live events."""
    return f"node-{node_id}"


def _broadcast(node: EdgeNode, message_type: str, payload: dict[str, Any]) -> None:
    for group in (node_group(node.pk), ALL_NODES_GROUP):
        group_send_on_commit(group, message_type, payload)


def _broadcast_deployment(deployment: Deployment) -> None:
    node = deployment.node
    _broadcast(node, "deployment.status", {
        "deployment": selectors.deployment_to_json(deployment), "node": selectors.node_to_json(node),
    })


# Every agent token starts with this: recognisable in a leaked config, and never with "-", which a command line
# would read as an option (``--token -x...`` failed to start the agent once in 64 tokens).
AGENT_TOKEN_PREFIX = "gemel_"  # noqa: S105 - a public marker, not a secret


def agent_token_new() -> str:
    """Return a new plain agent token: the prefix and 256 random bits, URL-safe."""
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def agent_token_create(
    *, name: str, site: Site | None = None, user: AbstractBaseUser | None = None,
) -> tuple[AgentToken, str]:
    """Create an agent token called ``name`` for a box of ``site`` (the default site when None); return the row and
    the plain token (shown this once only). The node it registers serves that site.

    Raises:
        ValidationError: an empty or over-long name.
    """
    name = clean_name(name, "agent token")
    plain = agent_token_new()
    token = AgentToken.objects.create(
        name=name, site=site_or_default(site), token_hash=selectors.token_hash(plain), prefix=plain[:12],
        created_by=user if user is not None and user.is_authenticated else None,
    )
    return token, plain


def agent_token_revoke(*, token: AgentToken, user: AbstractBaseUser | None = None) -> AgentToken:
    """Revoke ``token`` (agents presenting it get 403 from now on); revoking twice keeps the first time."""
    if token.revoked_at is None:
        AgentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        token.refresh_from_db()
        logger.info("agent token %s revoked by %s", token, user)
    return token


def _own_deployment(node: EdgeNode, deployment_id: int | None) -> Deployment | None:
    if deployment_id is None:
        return None
    return Deployment.objects.filter(pk=deployment_id, node=node).first()


def _check_token_has_room(token: AgentToken, name: str) -> None:
    """Raise PermissionDenied when ``token`` already holds NODES_PER_TOKEN nodes other than ``name``."""
    AgentToken.objects.select_for_update().filter(pk=token.pk).first()  # one registration per token at a time
    held = EdgeNode.objects.filter(token=token).exclude(name=name)
    if held.count() >= NODES_PER_TOKEN:
        shown = ", ".join(repr(other) for other in held.values_list("name", flat=True)[:3])
        raise PermissionDenied(
            f"agent token {token.prefix}… already registered node {shown}; a token registers at most "
            f"{NODES_PER_TOKEN} node(s): create a token for {name!r}"
        )


@transaction.atomic
def node_register(
    *, token: AgentToken, name: str, device_kind: str, device_name: str, memory_total_bytes: int,
    budget_bytes: int | None, agent_version: str, active_deployment: int | None,
) -> EdgeNode:
    """Create or update the node ``name`` for the agent holding ``token``; return it.

    A node belongs to the token that first registered it and serves that token's site: another token may take it
    over only once that token is revoked (how an operator moves a node to a new agent, or to another site). A
    token registers at most NODES_PER_TOKEN nodes. The active deployment the agent reports is kept when it is one
    of this node's deployments.

    Raises:
        ValidationError: empty or over-long name, unknown device kind, negative sizes.
        PermissionDenied: the node belongs to another agent token that is still valid, or this token already
            registered NODES_PER_TOKEN other nodes.
    """
    name = clean_name(name, "node")
    if device_kind not in ("cpu", "cuda"):
        raise ValidationError(f"device.kind must be cpu or cuda, got {device_kind!r}")
    if memory_total_bytes < 0 or (budget_bytes is not None and budget_bytes <= 0):
        raise ValidationError("memory sizes must be positive")
    _check_token_has_room(token, name)
    node, _ = EdgeNode.objects.select_for_update().get_or_create(
        name=name, defaults={"token": token, "site_id": token.site_id}
    )
    owner = node.token
    if owner is not None and owner.pk != token.pk and owner.revoked_at is None:
        raise PermissionDenied(
            f"node {name!r} belongs to another agent token ({owner.prefix}…); revoke that token to move the node"
        )
    node.token = token
    node.site_id = token.site_id
    node.device_kind = device_kind
    node.device_name = device_name[:200]
    node.memory_total_bytes = memory_total_bytes
    node.budget_bytes = budget_bytes
    node.agent_version = agent_version[:32]
    node.last_seen_at = timezone.now()
    node.active_deployment = _own_deployment(node, active_deployment)
    node.status = EdgeNode.Status.SERVING if node.active_deployment else EdgeNode.Status.IDLE
    node.save()
    _broadcast(node, "node.status", {"node": selectors.node_to_json(node)})
    return node


@transaction.atomic
def node_heartbeat(*, node: EdgeNode, status: str, detail: str, active_deployment: int | None) -> EdgeNode:
    """Record a heartbeat: the node is seen now, in ``status``, serving ``active_deployment``; return it.

    Raises:
        ValidationError: an unknown status.
    """
    if status not in EdgeNode.Status.values:
        raise ValidationError(f"status must be one of {', '.join(EdgeNode.Status.values)}, got {status!r}")
    node = EdgeNode.objects.select_for_update().get(pk=node.pk)
    changed = (node.status, node.status_detail, node.active_deployment_id)
    node.status = status
    node.status_detail = detail or ""
    node.active_deployment = _own_deployment(node, active_deployment)
    was_offline = not selectors.node_is_online(node)
    node.last_seen_at = timezone.now()
    node.save(update_fields=["status", "status_detail", "active_deployment", "last_seen_at"])
    if was_offline or changed != (node.status, node.status_detail, node.active_deployment_id):
        _broadcast(node, "node.status", {"node": selectors.node_to_json(node)})
    return node


def _record_status(deployment: Deployment, status: str, detail: str) -> None:
    """Add ``status`` to the deployment's history unless it repeats the newest entry; keep the newest
    DEPLOYMENT_HISTORY_KEPT entries."""
    newest_first = DeploymentStatusChange.objects.filter(deployment=deployment).order_by("-id")
    if newest_first.values_list("status", "detail").first() == (status, detail):
        return
    DeploymentStatusChange.objects.create(deployment=deployment, status=status, detail=detail)
    first_dropped = newest_first.values_list("id", flat=True)[DEPLOYMENT_HISTORY_KEPT:DEPLOYMENT_HISTORY_KEPT + 1]
    for entry_id in first_dropped:
        newest_first.filter(id__lte=entry_id).delete()  # this one and every older one


@transaction.atomic
def deployment_create(
    *, bundle: MergeBundle, node: EdgeNode, user: AbstractBaseUser | None, budget_bytes: int | None = None,
    scheduler: str = "merged",
) -> Deployment:
    """Assign ``bundle`` to ``node``: it becomes the node's desired deployment; return it.

    Deployments of the node still on their way are superseded (the agent converges on the newest).

    Raises:
        ValidationError: the bundle is not deployable (a query misses its accuracy target; the reason is
            in the message), it was made from another site's queries than the node serves, the budget is not
            positive, or the scheduler is not one the engine knows.
    """
    if scheduler not in list_schedulers():
        raise ValidationError(f"unknown scheduler {scheduler!r}; known: {', '.join(list_schedulers())}")
    ok, reason = selectors.bundle_fits_node(bundle, node)
    if ok:
        ok, reason = selectors.bundle_deployable(bundle)
    if not ok:
        raise ValidationError(f"bundle cannot be deployed: {reason}")
    if budget_bytes is not None and budget_bytes <= 0:
        raise ValidationError("budget_bytes must be positive")
    node = EdgeNode.objects.select_for_update().get(pk=node.pk)
    return _deployment_new(node=node, bundle=bundle, user=user, budget_bytes=budget_bytes, scheduler=scheduler,
                           detail="")


def _deployment_new(
    *, node: EdgeNode, bundle: MergeBundle, user: AbstractBaseUser | None, budget_bytes: int | None,
    scheduler: str, detail: str,
) -> Deployment:
    for stale in selectors.deployments_in_flight(node=node):
        stale.status = Deployment.Status.SUPERSEDED
        stale.detail = "replaced by a newer deployment before it was applied"
        stale.save(update_fields=["status", "detail", "updated_at"])
        _record_status(stale, stale.status, stale.detail)
        _broadcast_deployment(stale)
    deployment = Deployment.objects.create(
        node=node, bundle=bundle, scheduler=scheduler, budget_bytes=budget_bytes, detail=detail,
        previous=node.active_deployment,
        created_by=user if user is not None and user.is_authenticated else None,
    )
    _record_status(deployment, deployment.status, detail)
    _broadcast_deployment(deployment)
    return deployment


@transaction.atomic
def deployment_rollback(*, node: EdgeNode, user: AbstractBaseUser | None) -> Deployment:
    """Return ``node`` to the deployment its current one replaced: the current one is marked rolled back
    and a new deployment of the earlier bundle becomes desired; return the new deployment.

    Raises:
        Conflict (a ValidationError): nothing is deployed, or the current deployment replaced nothing.
    """
    node = EdgeNode.objects.select_for_update().get(pk=node.pk)
    current = selectors.deployment_desired(node=node)
    if current is None:
        raise Conflict("nothing is deployed on this node")
    target = current.previous
    if target is None or target.pk == current.pk:
        raise Conflict("the current deployment replaced nothing: there is nothing to roll back to")
    current.status = Deployment.Status.ROLLED_BACK
    current.detail = f"rolled back to the bundle of deployment {target.pk}"
    current.save(update_fields=["status", "detail", "updated_at"])
    _record_status(current, current.status, current.detail)
    _broadcast_deployment(current)
    return _deployment_new(
        node=node, bundle=target.bundle, user=user, budget_bytes=target.budget_bytes, scheduler=target.scheduler,
        detail=f"rollback from deployment {current.pk}",
    )


@transaction.atomic
def deployment_report_status(*, deployment: Deployment, status: str, detail: str) -> Deployment:
    """Record a status the agent reported for ``deployment`` and update its node; return the deployment.

    ``active`` makes it the node's active deployment and supersedes the one active before; ``failed``
    keeps the node's active deployment (the agent goes on serving it) and marks the node degraded.

    Raises:
        ValidationError: a status agents may not report.
    """
    if status not in REPORTABLE:
        raise ValidationError(f"status must be one of {', '.join(REPORTABLE)}, got {status!r}")
    deployment = Deployment.objects.select_for_update().select_related("bundle").get(pk=deployment.pk)
    node = EdgeNode.objects.select_for_update().get(pk=deployment.node_id)
    detail = detail or ""
    _record_status(deployment, status, detail)
    if deployment.status not in SETTLED_BY_SERVER:
        deployment.status = status
        deployment.detail = detail
        deployment.save(update_fields=["status", "detail", "updated_at"])
    if status == Deployment.Status.ACTIVE:
        before = node.active_deployment
        if before is not None and before.pk != deployment.pk and before.status == Deployment.Status.ACTIVE:
            before.status = Deployment.Status.SUPERSEDED
            before.detail = f"replaced by deployment {deployment.pk}"
            before.save(update_fields=["status", "detail", "updated_at"])
            _record_status(before, before.status, before.detail)
            _broadcast_deployment(before)
        node.active_deployment = deployment
        node.status, node.status_detail = EdgeNode.Status.SERVING, ""
    elif status == Deployment.Status.FAILED:
        node.status = EdgeNode.Status.DEGRADED if node.active_deployment_id else EdgeNode.Status.IDLE
        node.status_detail = detail
    else:
        node.status, node.status_detail = EdgeNode.Status.DEPLOYING, detail
    node.last_seen_at = timezone.now()
    node.save(update_fields=["active_deployment", "status", "status_detail", "last_seen_at"])
    deployment.node = node
    _broadcast_deployment(deployment)
    return deployment


def _metrics_expire(node: EdgeNode, newest: MetricSample) -> None:
    """Once the node keeps more than METRICS_RETENTION samples or METRICS_RETENTION_BYTES bytes of them, delete
    its oldest until a tenth of each limit is free again (the ``newest`` is always kept), and count what it keeps
    afresh. Below the limits this costs nothing: ``metrics_record`` keeps the node's counts as it stores."""
    if (node.retained_samples <= settings.METRICS_RETENTION
            and node.retained_bytes <= settings.METRICS_RETENTION_BYTES):
        return
    keep_samples = settings.METRICS_RETENTION - settings.METRICS_RETENTION // 10
    keep_bytes = settings.METRICS_RETENTION_BYTES - settings.METRICS_RETENTION_BYTES // 10
    samples = MetricSample.objects.filter(node=node)
    beyond_count = samples.order_by("-id").values_list("id", flat=True)[keep_samples:keep_samples + 1]
    running = samples.annotate(kept_bytes=Window(Sum("payload_bytes"), order_by=F("id").desc()))
    # (Another filter here would apply before the running total is taken: the newest is left out afterwards.)
    over = running.filter(kept_bytes__gt=keep_bytes).order_by("-id").values_list("id", flat=True)
    beyond_bytes = [sample_id for sample_id in over[:2] if sample_id != newest.pk][:1]
    cut = max([*beyond_count, *beyond_bytes], default=None)
    if cut is not None:
        samples.filter(id__lte=cut).delete()  # that one and every older one
    kept = samples.aggregate(count=Count("id"), bytes=Sum("payload_bytes"))
    EdgeNode.objects.filter(pk=node.pk).update(retained_samples=kept["count"], retained_bytes=kept["bytes"] or 0)


@transaction.atomic
def metrics_record(
    *, node: EdgeNode, at: datetime, deployment: int | None, simulated: bool, memory: dict[str, Any],
    queries: dict[str, Any],
) -> MetricSample:
    """Store one metrics report of ``node`` and send it to the node's live monitor after commit (and the fleet
    channel its summary, when this report opens a period: ``fleet_summary_send``); return the sample.

    The node keeps its newest samples: at most METRICS_RETENTION of them, and at most METRICS_RETENTION_BYTES
    of payload (a node sending large reports keeps fewer); past either, the oldest go until a tenth is free.

    Raises:
        ValidationError: ``memory`` or ``queries`` breaks the protocol (types, ranges, finite numbers, sizes).
    """
    try:
        report = MetricsReport.from_json({"memory": memory, "queries": queries})
    except ProtocolError as exc:
        raise ValidationError(str(exc)) from None
    payload = report.to_json()
    sample = MetricSample.objects.create(
        node=node, deployment=_own_deployment(node, deployment), at=at, simulated=bool(simulated),
        resident_bytes=report.memory.resident_bytes,
        shared_bytes=report.memory.shared_bytes,
        gpu_used_bytes=None if report.memory.gpu is None else report.memory.gpu.used_bytes,
        payload=payload, payload_bytes=len(json.dumps(payload, separators=(",", ":"))),
    )
    EdgeNode.objects.filter(pk=node.pk).update(
        last_seen_at=timezone.now(), latest_sample=sample, retained_samples=F("retained_samples") + 1,
        retained_bytes=F("retained_bytes") + sample.payload_bytes)
    node.retained_samples += 1
    node.retained_bytes += sample.payload_bytes
    _metrics_expire(node, sample)
    group_send_on_commit(node_group(node.pk), "node.metrics",
                         {"node": node.pk, "sample": selectors.sample_to_json(sample)})
    transaction.on_commit(_fleet_summary_if_due)
    return sample


def _fleet_summary_if_due() -> None:
    if claim_period(FLEET_SUMMARY_PERIOD, settings.FLEET_SUMMARY_SECONDS):
        fleet_summary_send()


def fleet_summary_send() -> int:
    """Send the fleet channel one ``fleet.summary`` message with ``fleet_node_json`` of every box that reported
    since its last summary, and mark them summarised; return how many boxes it named (0: nothing sent).

    ``metrics_record`` calls it for the first report of each FLEET_SUMMARY_SECONDS (in any process), so a box's
    summary reaches the fleet within that period and one report interval."""
    now = timezone.now()
    due = EdgeNode.objects.filter(Q(summary_sent_at__isnull=True) | Q(summary_sent_at__lt=F("last_seen_at")),
                                  last_seen_at__isnull=False)
    ids = list(due.values_list("pk", flat=True))
    if not ids:
        return 0
    EdgeNode.objects.filter(pk__in=ids).update(summary_sent_at=now)
    group_send_now(ALL_NODES_GROUP, "fleet.summary", {"nodes": selectors.fleet_nodes_json(ids), "at": now.isoformat()})
    return len(ids)
