"""Project-level views: health check, favicon and the overview page."""

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_GET

import gemel_engine
from gemel_engine import zoo
from webapp.body_limit import refusal_body, request_body_limit_message
from webapp.edge import selectors as edge_selectors
from webapp.onboarding import next_step
from webapp.workloads import selectors as workload_selectors


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Report that the web process is up, with the engine version and the architectures it can build."""
    return JsonResponse({"status": "ok", "engine": gemel_engine.__version__, "architectures": zoo.list_models()})


@login_not_required
@require_GET
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """Send browsers that ask for /favicon.ico (pages without a <link rel="icon">: the admin, the API docs) to the
    dashboard's icon among the static files."""
    return HttpResponsePermanentRedirect(static("favicon.svg"))


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """Render the overview: the fleet (every site and box, most urgent first), GPU memory now (shared vs per
    model), queries and their status."""
    nodes = edge_selectors.overview_nodes()
    fleet = edge_selectors.fleet_overview()
    chart = [
        {"name": row["node"].name, "shared_bytes": row["shared_bytes"], "per_model_bytes": row["per_model_bytes"],
         "budget_bytes": row["budget_bytes"], "simulated": bool(row["sample"] and row["sample"].simulated)}
        for row in nodes
    ]
    context = {
        "nodes": nodes, "queries": edge_selectors.overview_queries(nodes), "memory_data": chart,
        "demo_builds": workload_selectors.demo_seeds_building(),
        "fleet": fleet, "fleet_nodes": any(entry["nodes"] for entry in fleet),
        "fleet_empty_sites": [entry for entry in fleet if not entry["nodes"]],
        "fleet_data": {"offline_after_s": edge_selectors.node_offline_after().total_seconds()},
        "guide": next_step(),
    }
    return render(request, "overview.html", context)


@login_not_required
def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 page for input it refuses before any view runs (a body over DATA_UPLOAD_MAX_MEMORY_SIZE,
    too many fields or files): 413 for an oversized body, and one JSON ``detail`` line on the API."""
    too_big = isinstance(exception, RequestDataTooBig)
    status = 413 if too_big else 400
    if too_big:
        detail = request_body_limit_message()
    elif isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        detail = "too many form fields or files in one request"
    else:
        detail = "bad request"
    body, kind = refusal_body(request.path, status, detail)
    return HttpResponse(body, status=status, content_type=kind)
