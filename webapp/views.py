"""Project-level views: health check and the overview page."""

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

import gemel_engine
from gemel_engine import zoo
from webapp.edge import selectors as edge_selectors


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Report that the web process is up, with the engine version and the architectures it can build."""
    return JsonResponse({"status": "ok", "engine": gemel_engine.__version__, "architectures": zoo.list_models()})


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """Render the overview: nodes online/offline, GPU memory now (shared vs per model), queries and status."""
    nodes = edge_selectors.overview_nodes()
    chart = [
        {"name": row["node"].name, "shared_bytes": row["shared_bytes"], "per_model_bytes": row["per_model_bytes"],
         "budget_bytes": row["budget_bytes"], "simulated": bool(row["sample"] and row["sample"].simulated)}
        for row in nodes
    ]
    context = {"nodes": nodes, "queries": edge_selectors.overview_queries(nodes), "memory_data": chart}
    return render(request, "overview.html", context)
