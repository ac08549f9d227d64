"""Receivers of Django's authentication signals (connected in AccountsConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest

from webapp.accounts.throttle import client_address, login_failed, login_succeeded
from webapp.live import session_sockets_close


def close_live_sockets_on_logout(sender: Any, request: HttpRequest | None = None, **_: Any) -> None:
    """A browser that signs out loses its live sockets too (they were opened under its session)."""
    session = getattr(request, "session", None)
    session_sockets_close(getattr(session, "session_key", None))


def count_failed_sign_in(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    """Count a failed authentication of a web request (any sign-in page) towards the sign-in throttle."""
    if request is None:  # a shell or a command checking a password, not someone signing in
        return
    login_failed(username=str(credentials.get("username", "")), address=client_address(request))


def forget_failures_on_sign_in(sender: Any, user: AbstractBaseUser | None = None, **_: Any) -> None:
    """A successful sign-in clears its account's failures (its address keeps its count)."""
    if user is not None:
        login_succeeded(username=user.get_username())
