"""Live node events for the dashboard: metrics samples, node status and deployment status."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from webapp.edge.models import EdgeNode
from webapp.edge.services import ALL_NODES_GROUP, node_group
from webapp.live import AuthenticatedJsonConsumer


class NodeMetricsConsumer(AuthenticatedJsonConsumer):
    """``ws/nodes/`` (the fleet: every node's status and deployments, and one summary of the boxes that reported at
    most every FLEET_SUMMARY_SECONDS) or ``ws/nodes/<id>/`` (one node, every metrics report); forwards each event
    as JSON ``{"type": "node.metrics" | "fleet.summary" | "node.status" | "deployment.status", ...payload}``."""

    async def group_names(self) -> list[str] | None:
        node_id = self.scope["url_route"]["kwargs"].get("node_id")
        if node_id is None:
            return [ALL_NODES_GROUP]
        exists = await database_sync_to_async(EdgeNode.objects.filter(pk=node_id).exists)()
        return [node_group(int(node_id))] if exists else None

    async def _forward(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": event["type"], **event["payload"]})

    async def node_metrics(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def fleet_summary(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def node_status(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def deployment_status(self, event: dict[str, Any]) -> None:
        await self._forward(event)
