"""Refuse a weights upload that is over the limit from its Content-Length, before Django reads the body."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

# Room for the form fields and multipart boundaries around the weights file.
FORM_OVERHEAD_BYTES = 1024 * 1024


def upload_body_limit() -> int:
    """Return the most bytes a weights upload's request body may have: the file and its form around it."""
    return int(settings.MAX_WEIGHTS_UPLOAD_MB) * 1024 * 1024 + FORM_OVERHEAD_BYTES


def upload_limit_message() -> str:
    """Return what an upload over the limit is told."""
    return f"weights file is over the limit of {settings.MAX_WEIGHTS_UPLOAD_MB} MiB"


def upload_paths() -> frozenset[str]:
    """Return the paths that take a weights upload: the API's and the upload page's."""
    return frozenset((reverse("api:create_model"), reverse("model_create")))


def upload_too_large_message(request: HttpRequest) -> str | None:
    """Return why the request body is too large for a weights upload, or None when it may be read."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    return upload_limit_message() if length > upload_body_limit() else None


def refuse_oversized_upload(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap an API view so that an oversized upload gets 413 {"detail": ...} without its body being parsed."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        message = upload_too_large_message(request)
        if message is not None:
            return JsonResponse({"detail": message}, status=413)
        return view(request, *args, **kwargs)

    return wrapper
