"""Login for every page; the JSON API answers 401/403 itself (session for people, bearer token for agents).
Plus the Content-Security-Policy of every page, and no debug error page for anyone not signed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import get_resolver

API_PREFIX = "/api/"


class GemelLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, except for the API, whose endpoints authenticate on their own."""

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        if request.path.startswith(API_PREFIX):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


# What the dashboard's pages may load and run: their own scripts only (no inline script, no eval), styles of
# their own plus the ones Plotly injects, images of their own and drawn ones, live data from their own host.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
# django-ninja's interactive docs run an inline script: they keep the browser's default policy.
CSP_EXEMPT = ("/api/docs",)


class ContentSecurityPolicyMiddleware:
    """Send CONTENT_SECURITY_POLICY with every response (but the API docs page), unless a view set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(CSP_EXEMPT):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class AnonymousErrorPagesMiddleware:
    """Under DEBUG, Django answers a 404 with a page listing every URL pattern and a 500 with a traceback; a
    request that is not signed in gets the plain page that production gives instead. JSON answers (the API's
    own 404s) pass untouched. Needs ``request.user``: place it after AuthenticationMiddleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            settings.DEBUG
            and response.status_code in (404, 500)
            and response.get("Content-Type", "").startswith("text/html")
            and not request.user.is_authenticated
        ):
            return plain_error_page(request, response.status_code)
        return response


def plain_error_page(request: HttpRequest, status: int) -> HttpResponse:
    """Return the page production answers with for ``status`` (404 or 500): the URLconf's handler404/handler500."""
    handler = get_resolver(getattr(request, "urlconf", None)).resolve_error_handler(status)
    return handler(request, Http404()) if status == 404 else handler(request)
