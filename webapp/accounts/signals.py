"""Receivers of Django's authentication signals (connected in AccountsConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from webapp.live import session_sockets_close


def close_live_sockets_on_logout(sender: Any, request: HttpRequest | None = None, **_: Any) -> None:
    """A browser that signs out loses its live sockets too (they were opened under its session)."""
    session = getattr(request, "session", None)
    session_sockets_close(getattr(session, "session_key", None))
