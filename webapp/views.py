"""Project-level views: health check and the overview page."""

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

import gemel_engine
from gemel_engine import zoo


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Report that the web process is up, with the engine version and the architectures it can build."""
    return JsonResponse({"status": "ok", "engine": gemel_engine.__version__, "architectures": zoo.list_models()})


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """Render the overview: nodes, memory now, queries and their status."""
    return render(request, "overview.html", {})
