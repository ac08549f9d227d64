"""The sign-in page, throttled against password guessing (webapp/accounts/throttle.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpResponse

from webapp.accounts.throttle import login_failed, login_succeeded, login_wait_seconds


class ThrottledLoginView(auth_views.LoginView):
    """Django's LoginView that refuses attempts, with 429 and how long to wait, after too many failures."""

    def post(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150]
        address = request.META.get("REMOTE_ADDR", "")
        wait = login_wait_seconds(username=username, address=address)
        if wait:
            form = self.get_form()
            form.errors.clear()
            minutes = max(1, round(wait / 60))
            form.add_error(None, f"Too many failed sign-ins. Try again in about {minutes} minute(s).")
            return self.render_to_response(self.get_context_data(form=form, throttled=True), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        login_failed(username=str(form.data.get("username", ""))[:150],
                     address=self.request.META.get("REMOTE_ADDR", ""))
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        login_succeeded(username=form.get_user().get_username())
        return super().form_valid(form)
