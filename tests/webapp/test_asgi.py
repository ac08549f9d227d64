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
