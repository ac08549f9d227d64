"""Pages of the edge app: deployments (deploy, rollback, history, agent tokens) and the live monitor."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from webapp.accounts.selectors import user_is_operator
from webapp.api_types import database_id
from webapp.edge import selectors
from webapp.edge.models import EdgeNode
from webapp.workloads.selectors import site_list


@require_GET
def deployments(request: HttpRequest) -> HttpResponse:
    """Render bundles with a Deploy button per node of the bundle's site (gated with the reason), live status,
    history, rollback buttons and, for operators, the agent tokens (each made for a site)."""
    nodes = list(selectors.nodes_list())
    history = selectors.deployment_history()
    node_rows = [
        {"node": n, "online": selectors.node_is_online(n), "rollback_to": selectors.node_rollback_target(n),
         "serving_bundle": n.active_deployment.bundle_id if n.active_deployment else None}
        for n in nodes
    ]
    bundles = selectors.bundles_for_deployment()
    for row in bundles:  # a bundle deploys only to the boxes of the site whose queries it was made from
        row["nodes"] = [n for n in node_rows if n["node"].site_id == row["bundle"].job.site_id]
    context = {
        "nodes": node_rows,
        "bundles": bundles,
        "sites": list(site_list()),
        "history": history,
        "tokens": list(selectors.agent_tokens_list()) if user_is_operator(request.user) else [],
        "live_data": {
            "deployments": [selectors.deployment_to_json(d) for d in history],
            "nodes": [selectors.node_to_json(n) for n in nodes],
        },
    }
    return render(request, "edge/deployments.html", context)


@require_GET
def monitor(request: HttpRequest) -> HttpResponse:
    """Render the live monitor of one node (``?node=<id>``, else the first): memory, fps, drops, accuracy.

    Raises:
        Http404: ``node`` is given but names no node (not an id, or an unknown one).
    """
    nodes = list(selectors.nodes_list())
    node = None
    if asked := request.GET.get("node", ""):
        node_id = database_id(asked)
        if node_id is None:
            raise Http404("no such node")
        node = get_object_or_404(EdgeNode, pk=node_id)
    elif nodes:
        node = nodes[0]
    context = {
        "nodes": nodes,
        "node": node,
        "online": selectors.node_is_online(node) if node else False,
        "served_frames": selectors.served_frames(node),
        **selectors.node_attention(node),
        "monitor_data": {
            "node": selectors.node_to_json(node) if node else None,
            "attention_url": reverse("monitor_attention", args=[node.pk]) if node else None,
        },
    }
    return render(request, "edge/monitor.html", context)


@require_GET
def monitor_attention(request: HttpRequest, node_id: int) -> JsonResponse:
    """Return what limits the node now and its queries' alerts (``selectors.node_attention``), for the monitor's
    script to refresh its card as samples arrive.

    Raises:
        Http404: no such node.
    """
    return JsonResponse(selectors.node_attention(get_object_or_404(EdgeNode, pk=node_id)))
