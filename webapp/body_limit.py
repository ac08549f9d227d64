"""Request bodies refused from their size before Django reads them.

Django's ASGI handler reads a whole body into a temporary file before any middleware, login check or view
runs, so its own limits (DATA_UPLOAD_MAX_MEMORY_SIZE, the upload views' Content-Length check) come after the
disk and the time are spent. RequestBodyLimit answers 413 first: from Content-Length before reading a byte,
and, for a body sent without one (chunked), as soon as the bytes received pass the limit.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from webapp.middleware import API_PREFIX
from webapp.workloads.uploads import upload_body_limit, upload_limit_message, upload_paths

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_body_limit_message() -> str:
    """Return what a request whose body is over DATA_UPLOAD_MAX_MEMORY_SIZE is told."""
    return f"request body over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE // (1 << 20)} MiB"


def body_limit(path: str) -> tuple[int, str]:
    """Return the most bytes a request body to ``path`` may have, and what a larger one is told.

    Weights uploads may carry the upload limit; every other request DATA_UPLOAD_MAX_MEMORY_SIZE.
    """
    if path in upload_paths():
        return upload_body_limit(), upload_limit_message()
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE, request_body_limit_message()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def refusal_body(path: str, status: int, detail: str) -> tuple[bytes, str]:
    """Return the body and content type of input refused before any view runs: one JSON ``detail`` line on
    the API, a one-line page elsewhere."""
    if path.startswith(API_PREFIX):
        return json.dumps({"detail": detail}).encode(), "application/json"
    return f"<!doctype html><title>{status}</title><h1>{html.escape(detail)}</h1>".encode(), "text/html; charset=utf-8"


async def _send_too_large(scope: Scope, send: Send, detail: str) -> None:
    body, kind = refusal_body(scope["path"], 413, detail)
    headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestBodyLimit:
    """ASGI middleware: a request body over ``body_limit(path)`` gets 413 and one line saying the limit, before
    the application reads it (from Content-Length) or while it does (a body without one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, detail = body_limit(scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            await _send_too_large(scope, send, detail)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await _send_too_large(scope, send, detail)
                    # The application stops reading as for a client that went away, and answers nothing.
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, receive_within_limit, send)
