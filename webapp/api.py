"""The JSON API (django-ninja): session auth with CSRF for people, bearer tokens for edge agents.

Every app contributes a router; the OpenAPI description is at /api/openapi.json and browsable at /api/docs.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as ServiceError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import ValidationError
from ninja.security import django_auth

from webapp.errors import Conflict

api = NinjaAPI(
    title="Gemel API",
    version="1",
    description="Cameras, models, queries, workload analysis, merge jobs, edge nodes and deployments. "
    "People authenticate with their dashboard session (and the CSRF token for writes); edge agents with "
    "a bearer token on /api/agent/ only (docs/agent-protocol.md).",
    auth=django_auth,
    urls_namespace="api",
    docs_decorator=login_required,
)
api.add_router("/", "webapp.workloads.api.router")
api.add_router("/", "webapp.merges.api.router")
api.add_router("/", "webapp.edge.api.router")
api.add_router("/agent/", "webapp.edge.agent_api.router")


@api.exception_handler(ValidationError)
def invalid_input(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """Answer malformed input with 422 and one readable ``detail`` line (plus the per-field ``errors``)."""
    problems = []
    for error in exc.errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "payload"))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return api.create_response(request, {"detail": "; ".join(problems), "errors": exc.errors}, status=422)


@api.exception_handler(PermissionDenied)
def not_yours(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    """Answer an action on something the caller does not own with 403 and the service's reason."""
    return api.create_response(request, {"detail": str(exc) or "permission denied"}, status=403)


@api.exception_handler(ServiceError)
def refused(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    """Answer a service's refusal (Django's ValidationError) with 400 and its reasons on one ``detail`` line;
    a ``Conflict`` (the state refuses a valid request) with 409."""
    status = 409 if isinstance(exc, Conflict) else 400
    return api.create_response(request, {"detail": "; ".join(exc.messages)}, status=status)
