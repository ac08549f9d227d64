"""Sign-in pages, each throttled against password guessing (webapp/accounts/throttle.py): the dashboard's own
and the admin's go through one wrapper that refuses while the throttle holds an account or address back."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webapp.accounts.throttle import client_address, login_wait_seconds


def throttled_sign_in(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Return ``view`` with sign-in attempts refused, with 429 and how long to wait, after too many failures.

    The refusal comes before any password is checked, so the right one is refused too.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            username = str(request.POST.get("username", ""))
            wait = login_wait_seconds(username=username, address=client_address(request))
            if wait:
                return _sign_in_refused(request, wait)
        return view(request, *args, **kwargs)

    return wrapper


def _sign_in_refused(request: HttpRequest, wait: int) -> HttpResponse:
    minutes = max(1, round(wait / 60))
    context = {
        "form": AuthenticationForm(request),
        "throttled": f"Too many failed sign-ins. Try again in about {minutes} minute(s).",
        "next": request.POST.get("next", ""),
    }
    return render(request, "registration/login.html", context, status=429)


# The dashboard's sign-in page.
sign_in = throttled_sign_in(auth_views.LoginView.as_view())
# The admin's sign-in page, at its own address (operators are staff, so it signs in to everything too).
admin_sign_in = throttled_sign_in(admin.site.login)
