"""The ASGI application's own HTTP layer: static files in the embedded mode."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from webapp.asgi import StaticFilesOrNotFound


@pytest.mark.parametrize("path", ["/static/..%2f..%2fwebapp/settings.py", "/static/../../manage.py",
                                  "/static/vendor/plotly/..%2f..%2f..%2f..%2fetc/passwd", "/static/absent.js"])
def test_a_static_path_that_escapes_or_is_missing_is_a_plain_404_even_under_debug(path, settings):
    settings.DEBUG = True
    handler = StaticFilesOrNotFound(lambda scope, receive, send: None)
    response = handler.serve(RequestFactory().get(path))
    assert response.status_code == 404
    assert b"DEBUG = True" not in response.content


def test_a_real_static_file_is_served():
    handler = StaticFilesOrNotFound(lambda scope, receive, send: None)
    response = handler.serve(RequestFactory().get("/static/vendor/plotly/plotly.min.js"))
    assert response.status_code == 200
    # Close the file only: response.close() would send request_finished, whose receivers touch the database
    # (which this test does not use; in a shuffled run a connection may be open by then).
    response.file_to_stream.close()


class _Client:
    """One HTTP request to an ASGI application: a body in chunks of CHUNK bytes (with or without
    Content-Length), counting what the application read and keeping what it sent."""

    CHUNK = 1 << 20

    def __init__(self, path: str, *, chunks: int, declare_length: bool) -> None:
        headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
        if declare_length:
            headers.append((b"content-length", str(chunks * self.CHUNK).encode()))
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                      "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                      "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
                      "server": ("testserver", 80)}
        self.chunks = chunks
        self.read = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.read >= self.chunks:
            return {"type": "http.disconnect"}
        self.read += 1
        return {"type": "http.request", "body": b"x" * self.CHUNK, "more_body": self.read < self.chunks}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, bytes]:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return starts[0]["status"], b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _post(path: str, *, chunks: int, declare_length: bool) -> _Client:
    from webapp.asgi import application

    client = _Client(path, chunks=chunks, declare_length=declare_length)
    await application(client.scope, client.receive, client.send)
    return client


@pytest.mark.asyncio
async def test_a_body_declared_over_the_limit_gets_413_before_a_byte_is_read(settings):
    too_many = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // _Client.CHUNK + 1
    client = await _post("/api/cameras", chunks=too_many, declare_length=True)
    assert client.read == 0
    assert client.answer() == (413, b'{"detail": "request body over 8 MiB"}')


@pytest.mark.asyncio
async def test_a_chunked_body_over_the_limit_gets_413_once_the_bytes_pass_it(settings):
    within = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // _Client.CHUNK
    client = await _post("/cameras/new/", chunks=1000, declare_length=False)
    assert client.read == within + 1  # of 1000 chunks offered
    status, body = client.answer()
    assert status == 413 and b"request body over 8 MiB" in body


@pytest.mark.asyncio
@pytest.mark.parametrize("declare_length", [True, False])
async def test_a_weights_upload_gets_the_upload_limit_instead(settings, declare_length):
    settings.MAX_WEIGHTS_UPLOAD_MB = 1
    client = await _post("/api/models", chunks=3, declare_length=declare_length)
    assert client.read == (0 if declare_length else 3)
    assert client.answer() == (413, b'{"detail": "weights file is over the limit of 1 MiB"}')


@pytest.mark.asyncio
async def test_a_body_within_the_limit_reaches_the_application_whole():
    from webapp.body_limit import RequestBodyLimit

    bodies = []

    async def app(scope, receive, send):
        more = True
        while more:
            message = await receive()
            bodies.append(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = _Client("/api/cameras", chunks=8, declare_length=False)
    await RequestBodyLimit(app)(client.scope, client.receive, client.send)
    assert sum(map(len, bodies)) == 8 * _Client.CHUNK and client.answer() == (204, b"")
