"""ASGI entry point: Django for HTTP (and the static files in the embedded mode), Channels for websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - Django must be set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.exceptions import SuspiciousOperation  # noqa: E402
from django.http import Http404, HttpRequest, HttpResponse  # noqa: E402

from webapp.body_limit import RequestBodyLimit  # noqa: E402
from webapp.middleware import plain_error_page  # noqa: E402
from webapp.routing import websocket_urlpatterns  # noqa: E402


class StaticFilesOrNotFound(ASGIStaticFilesHandler):
    """Django's static files handler, where a path that escapes the static folders ("/static/..%2f..") is a
    404 like any other missing file instead of a SuspiciousFileOperation that ends as a 500, and a missing file
    gets the plain 404 page even under DEBUG (static files are public: no debug page for them)."""

    def serve(self, request: HttpRequest) -> HttpResponse:
        try:
            return super().serve(request)
        except (Http404, SuspiciousOperation):
            return plain_error_page(request, 404)


# Oversized bodies are refused before Django spools them to disk, static files or not.
http_application = RequestBodyLimit(
    StaticFilesOrNotFound(django_application) if settings.SERVE_STATIC else django_application
)
application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
