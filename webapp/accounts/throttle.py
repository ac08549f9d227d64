"""Sign-in throttling: after too many failed sign-ins for one account, or from one address, within a window,
further attempts are refused (the right password included) until the window has passed.

Failures are counted wherever Django authenticates a web request (signals.py), and every sign-in page, the
admin's included, refuses through one wrapper (views.py).

Counts live in Django's cache: the process's own memory by default (one web process in the embedded mode);
with several web processes each counts its own attempts, which still bounds guessing per process.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

# Longest username counted (Django's own limit): longer input cannot make longer cache keys.
MAX_USERNAME_CHARS = 150


def client_address(request: HttpRequest) -> str:
    """Return the address a request came from, as the throttle counts it."""
    return str(request.META.get("REMOTE_ADDR", ""))


def _keys(username: str, address: str) -> tuple[str, str]:
    return f"login-fail:user:{username[:MAX_USERNAME_CHARS].strip().lower()}", f"login-fail:addr:{address}"


def _count(key: str, now: float) -> tuple[int, float]:
    failures, started = cache.get(key, (0, now))
    if now - started >= settings.LOGIN_THROTTLE_WINDOW_S:
        return 0, now
    return failures, started


def login_wait_seconds(*, username: str, address: str) -> int:
    """Return the seconds until ``username`` may try to sign in from ``address`` again (0: it may now)."""
    now = time.time()
    waits = []
    for key, limit in zip(_keys(username, address), (settings.LOGIN_MAX_FAILURES_PER_USER,
                                                     settings.LOGIN_MAX_FAILURES_PER_ADDRESS), strict=True):
        failures, started = _count(key, now)
        if failures >= limit:
            waits.append(started + settings.LOGIN_THROTTLE_WINDOW_S - now)
    return max(1, round(max(waits))) if waits else 0


def login_failed(*, username: str, address: str) -> None:
    """Count one failed sign-in for ``username`` and for ``address``."""
    now = time.time()
    for key in _keys(username, address):
        failures, started = _count(key, now)
        cache.set(key, (failures + 1, started), timeout=settings.LOGIN_THROTTLE_WINDOW_S)


def login_succeeded(*, username: str) -> None:
    """Forget the failed sign-ins of ``username`` (the address keeps its count)."""
    cache.delete(_keys(username, "")[0])
