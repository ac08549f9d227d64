"""The dashboard's edge API (session auth): nodes, their metrics, deployments, rollback and agent tokens.

Reads are open to every signed-in user; writes need an operator (viewers get 403).
"""

from __future__ import annotations

from typing import Annotated, Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from pydantic import Field

from gemel_engine.runtime.protocol import MAX_COUNT
from webapp.accounts.permissions import api_require_operator
from webapp.api_types import DbId, Detail
from webapp.edge import selectors, services
from webapp.edge.models import AgentToken, EdgeNode
from webapp.merges.models import MergeBundle
from webapp.workloads.selectors import site_by_id

router = Router(tags=["edge"])


class DeploymentIn(Schema):
    bundle: DbId
    node: DbId
    budget_bytes: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None


class TokenIn(Schema):
    name: str
    site: DbId | None = Field(None, description="the site of the box it registers (default: the default site)")


def _token_json(token: AgentToken) -> dict[str, Any]:
    return {
        "id": token.pk, "name": token.name, "site": token.site_id, "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


@router.get("/nodes", response=list[dict[str, Any]])
def list_nodes(request: HttpRequest) -> list[dict[str, Any]]:
    """List the edge nodes with their status and whether they are online."""
    return [selectors.node_to_json(node) for node in selectors.nodes_list()]


@router.get("/nodes/{node_id}", response={200: dict[str, Any], 404: Detail})
def get_node(request: HttpRequest, node_id: int) -> dict[str, Any]:
    """Return one node."""
    return selectors.node_to_json(get_object_or_404(EdgeNode, pk=node_id))


@router.get("/nodes/{node_id}/metrics", response={200: list[dict[str, Any]], 404: Detail})
def node_metrics(request: HttpRequest, node_id: int, after: int | None = None) -> list[dict[str, Any]]:
    """Return the node's metric samples with an id above ``after`` (or the newest ones), oldest first."""
    node = get_object_or_404(EdgeNode, pk=node_id)
    return selectors.node_metrics(node=node, after=after)


@router.get("/deployments", response=list[dict[str, Any]])
def list_deployments(request: HttpRequest, node: int | None = None) -> list[dict[str, Any]]:
    """Return the newest deployments (of one node with ``?node=``), each with its status history."""
    target = get_object_or_404(EdgeNode, pk=node) if node is not None else None
    return [
        {**selectors.deployment_to_json(d),
         "history": [{"status": h.status, "detail": h.detail, "at": h.at.isoformat()} for h in d.history.all()]}
        for d in selectors.deployment_history(node=target)
    ]


@router.post("/deployments", response={201: dict[str, Any], 400: Detail, 403: Detail, 404: Detail})
def create_deployment(request: HttpRequest, body: DeploymentIn) -> Status[dict[str, Any]]:
    """Deploy a bundle to a node (operators only); refused with the reason when a query misses its target."""
    api_require_operator(request)
    bundle = get_object_or_404(MergeBundle, pk=body.bundle)
    node = get_object_or_404(EdgeNode, pk=body.node)
    deployment = services.deployment_create(
        bundle=bundle, node=node, user=request.user, budget_bytes=body.budget_bytes,
    )
    return Status(201, selectors.deployment_to_json(deployment))


@router.post("/nodes/{node_id}/rollback", response={201: dict[str, Any], 403: Detail, 404: Detail, 409: Detail})
def rollback(request: HttpRequest, node_id: int) -> Status[dict[str, Any]]:
    """Return a node to the bundle its current deployment replaced (operators only)."""
    api_require_operator(request)
    node = get_object_or_404(EdgeNode, pk=node_id)
    deployment = services.deployment_rollback(node=node, user=request.user)
    return Status(201, selectors.deployment_to_json(deployment))


@router.get("/agent-tokens", response={200: list[dict[str, Any]], 403: Detail})
def list_tokens(request: HttpRequest) -> list[dict[str, Any]]:
    """List agent tokens (names and prefixes, never the tokens; operators only)."""
    api_require_operator(request)
    return [_token_json(token) for token in selectors.agent_tokens_list()]


@router.post("/agent-tokens", response={201: dict[str, Any], 400: Detail, 403: Detail})
def create_token(request: HttpRequest, body: TokenIn) -> Status[dict[str, Any]]:
    """Create an agent token; the answer holds the token itself, shown this once (operators only)."""
    api_require_operator(request)
    token, plain = services.agent_token_create(name=body.name, site=site_by_id(body.site), user=request.user)
    return Status(201, {**_token_json(token), "token": plain})


@router.post("/agent-tokens/{token_id}/revoke", response={200: dict[str, Any], 403: Detail, 404: Detail})
def revoke_token(request: HttpRequest, token_id: int) -> dict[str, Any]:
    """Revoke an agent token (operators only)."""
    api_require_operator(request)
    token = services.agent_token_revoke(token=get_object_or_404(AgentToken, pk=token_id), user=request.user)
    return _token_json(token)
