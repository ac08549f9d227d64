"""Permission checks shared by views, API endpoints and consumers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from ninja.errors import HttpError

from webapp.accounts.selectors import user_is_operator


def operator_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a page view so that only operators reach it (viewers get 403; anonymous users the login page)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not user_is_operator(request.user):
            raise PermissionDenied("operators only")
        return view(request, *args, **kwargs)

    return wrapper


def api_require_operator(request: HttpRequest) -> None:
    """Refuse an API call that changes things unless it comes from an operator.

    Raises:
        HttpError: 403 for viewers.
    """
    if not user_is_operator(request.user):
        raise HttpError(403, "operators only: this account is read-only")
