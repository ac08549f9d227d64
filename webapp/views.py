"""Project-level views."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

import gemel_engine
from gemel_engine import zoo


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Report that the web process is up, with the engine version and the architectures it can build."""
    return JsonResponse({"status": "ok", "engine": gemel_engine.__version__, "architectures": zoo.list_models()})
