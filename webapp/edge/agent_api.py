"""The edge agent's API (docs/agent-protocol.md), mounted at /api/agent/: bearer agent tokens only.

A missing or unknown token gets 401, a revoked one 403; dashboard sessions are not accepted here, and
agent tokens are not accepted anywhere else.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import FileResponse, HttpRequest
from ninja import Router, Schema
from ninja.errors import HttpError
from ninja.security import HttpBearer
from pydantic import Field

from gemel_engine.errors import DeploymentError
from gemel_engine.runtime.protocol import MAX_COUNT, MAX_DETAIL_CHARS, MAX_NAME_CHARS, PROTOCOL_VERSION
from webapp.api_types import MAX_DATABASE_INT, DbId, Detail
from webapp.edge import selectors, services
from webapp.edge.models import AgentToken, Deployment, EdgeNode

# Seconds between the agent's metrics reports while serving.
METRICS_INTERVAL_S = 1


class AgentTokenAuth(HttpBearer):
    """``Authorization: Bearer <agent token>``: the token row, or 401 (unknown) / 403 (revoked)."""

    def authenticate(self, request: HttpRequest, token: str) -> AgentToken | None:
        found = selectors.agent_token_find(token=token)
        if found is None:
            return None
        if found.revoked_at is not None:
            raise HttpError(403, "this agent token has been revoked")
        return found


logger = logging.getLogger(__name__)
router = Router(auth=AgentTokenAuth(), tags=["agent"])


Bytes = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
DetailText = Annotated[str, Field(max_length=MAX_DETAIL_CHARS)]


class DeviceIn(Schema):
    kind: Literal["cpu", "cuda"]
    name: Annotated[str, Field(max_length=200)] = ""
    memory_total_bytes: Bytes = 0


class RegisterIn(Schema):
    protocol: Annotated[int, Field(ge=0, le=1000)]
    node: Name
    agent_version: Annotated[str, Field(max_length=32)] = ""
    device: DeviceIn
    budget_bytes: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    active_deployment: DbId | None = None


class RegisterOut(Schema):
    node: str
    heartbeat_interval_s: int
    metrics_interval_s: int


class HeartbeatIn(Schema):
    node: Name
    active_deployment: DbId | None = None
    status: Literal["idle", "serving", "deploying", "degraded"]
    detail: DetailText = ""


class HeartbeatOut(Schema):
    desired: dict[str, Any] | None


class StatusIn(Schema):
    node: Name
    status: Literal["downloading", "loading", "warming", "active", "failed"]
    detail: DetailText = ""


class StatusOut(Schema):
    deployment: int
    status: str


class MetricsIn(Schema):
    node: Name
    at: datetime
    deployment: DbId | None = None
    simulated: bool = False
    # Checked field by field by the engine's protocol (gemel_engine.runtime.protocol.MetricsReport).
    memory: dict[str, Any] = {}
    queries: dict[str, Any] = {}


class MetricsOut(Schema):
    stored: int


def _node(request: HttpRequest, name: str) -> EdgeNode:
    node = selectors.node_for_token(token=request.auth, name=name)
    if node is None:
        raise HttpError(404, "unknown node: register first")
    return node


def _deployment(request: HttpRequest, deployment_id: int, node: EdgeNode | None = None) -> Deployment:
    deployment = None
    if 1 <= deployment_id <= MAX_DATABASE_INT:
        deployment = (
            Deployment.objects.select_related("node", "bundle__job")
            .filter(pk=deployment_id, node__token=request.auth).first()
        )
    if deployment is None or (node is not None and deployment.node_id != node.pk):
        raise HttpError(404, "no such deployment for this agent")
    return deployment


def _file_url(deployment_id: int, name: str) -> str:
    return f"/api/agent/deployments/{deployment_id}/files/{name}"


@router.post("/register", response={200: RegisterOut, 400: Detail, 403: Detail})
def register(request: HttpRequest, body: RegisterIn) -> dict[str, Any]:
    """Register (or re-register) the calling agent's node."""
    if body.protocol != PROTOCOL_VERSION:
        raise HttpError(400, f"protocol {body.protocol} is not supported; this server speaks {PROTOCOL_VERSION}")
    node = services.node_register(
        token=request.auth, name=body.node, device_kind=body.device.kind, device_name=body.device.name,
        memory_total_bytes=body.device.memory_total_bytes, budget_bytes=body.budget_bytes,
        agent_version=body.agent_version, active_deployment=body.active_deployment,
    )
    return {"node": node.name, "heartbeat_interval_s": settings.AGENT_HEARTBEAT_SECONDS,
            "metrics_interval_s": METRICS_INTERVAL_S}


@router.post("/heartbeat", response={200: HeartbeatOut, 400: Detail, 404: Detail, 409: Detail})
def heartbeat(request: HttpRequest, body: HeartbeatIn) -> dict[str, Any]:
    """Record the node's heartbeat and answer its desired deployment (or null)."""
    node = _node(request, body.node)
    node = services.node_heartbeat(
        node=node, status=body.status, detail=body.detail, active_deployment=body.active_deployment,
    )
    desired = selectors.deployment_desired(node=node)
    if desired is None:
        return {"desired": None}
    try:
        return {"desired": selectors.deployment_desired_json(desired, file_url=_file_url)}
    except DeploymentError as exc:
        logger.warning("deployment %s cannot be sent to node %s: %s", desired.pk, node.name, exc)
        raise HttpError(409, f"the desired deployment {desired.pk} is not valid: {exc}") from None


@router.get("/deployments/{deployment_id}/files/{name}", response={404: Detail})
def download(request: HttpRequest, deployment_id: int, name: str) -> FileResponse:
    """Stream one file of the deployment's bundle (only deployments of the caller's nodes)."""
    deployment = _deployment(request, deployment_id)
    path = selectors.deployment_file_path(deployment=deployment, name=name)
    if path is None:
        raise HttpError(404, f"bundle file {name!r} not found")
    return FileResponse(path.open("rb"), content_type="application/octet-stream")


@router.post("/deployments/{deployment_id}/status", response={200: StatusOut, 400: Detail, 404: Detail})
def deployment_status(request: HttpRequest, deployment_id: int, body: StatusIn) -> dict[str, Any]:
    """Record a step of applying a deployment (downloading, loading, warming, active, failed)."""
    node = _node(request, body.node)
    deployment = _deployment(request, deployment_id, node)
    deployment = services.deployment_report_status(deployment=deployment, status=body.status, detail=body.detail)
    return {"deployment": deployment.pk, "status": deployment.status}


@router.post("/metrics", response={200: MetricsOut, 400: Detail, 404: Detail})
def metrics(request: HttpRequest, body: MetricsIn) -> dict[str, Any]:
    """Store one metrics report and send it to the live monitor."""
    node = _node(request, body.node)
    sample = services.metrics_record(
        node=node, at=body.at, deployment=body.deployment, simulated=body.simulated,
        memory=body.memory, queries=body.queries,
    )
    return {"stored": sample.pk}
