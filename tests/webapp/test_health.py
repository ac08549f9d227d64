from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_healthz_reports_the_engine_and_its_architectures(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ok"
    assert "resnet50" in data["architectures"]


def test_healthz_refuses_writes(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY must be set when DEBUG is off"),
        ({"GEMEL_DATA_DIR": "relative/dir"}, "GEMEL_DATA_DIR must be an absolute path"),
    ],
)
def test_bad_settings_fail_at_start_up_naming_the_variable(env, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_project_passes_djangos_system_checks():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_an_oversized_body_answers_413_with_one_json_line_on_the_api(operator_client):
    body = b'{"name": "' + b"x" * (10 << 20) + b'"}'
    response = operator_client.post("/api/cameras", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"detail": "request body over 8 MiB"}


def test_too_many_form_fields_or_files_answer_400(operator_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    fields = operator_client.post("/cameras/new/", {f"f{i}": "1" for i in range(1500)})
    assert fields.status_code == 400 and b"too many form fields or files" in fields.content
    files = {f"file{i}": SimpleUploadedFile(f"w{i}.pt", b"x") for i in range(150)}
    response = operator_client.post("/api/models", files)
    assert response.status_code == 400 and response.json() == {"detail": "too many form fields or files in one request"}


def test_pages_carry_a_content_security_policy_without_inline_scripts(viewer_client):
    policy = viewer_client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "object-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "Content-Security-Policy" in viewer_client.get("/login/").headers


def test_favicon_ico_leads_every_visitor_to_the_icon_that_every_page_links(client, viewer):
    from django.contrib.staticfiles import finders

    response = client.get("/favicon.ico")  # not signed in: browsers ask before anyone signs in
    assert response.status_code == 301 and response["Location"] == "/static/favicon.svg"
    assert finders.find("favicon.svg")
    pages = [client.get("/login/")]
    client.force_login(viewer)
    pages.append(client.get("/"))
    for page in pages:
        assert b'<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page.content
        assert "img-src 'self'" in page.headers["Content-Security-Policy"]


def test_signed_in_users_find_the_api_docs_in_the_menu(client, viewer):
    assert b"/api/docs" not in client.get("/login/").content
    client.force_login(viewer)
    assert b'<a href="/api/docs">API docs</a>' in client.get("/").content


DEBUG_PAGE_MARKS = (b"URLconf", b"DEBUG = True", b"Traceback", b"healthz")


def _shows_debug_details(content: bytes) -> bool:
    return any(mark in content for mark in DEBUG_PAGE_MARKS)


@pytest.mark.parametrize("path", ["/no-such-page", "/api/no-such-endpoint", "/merges/not-a-number/"])
def test_under_debug_an_anonymous_404_lists_no_url_patterns(client, settings, path):
    settings.DEBUG = True
    response = client.get(path)
    assert response.status_code == 404
    assert not _shows_debug_details(response.content)


def test_under_debug_a_signed_in_user_still_gets_djangos_404_with_the_patterns(viewer_client, settings):
    settings.DEBUG = True
    response = viewer_client.get("/no-such-page")
    assert response.status_code == 404 and b"URLconf" in response.content


def test_without_debug_a_404_lists_no_url_patterns_to_anyone(client, viewer_client, settings):
    settings.DEBUG = False
    from django.test import Client

    for who in (Client(), viewer_client):
        response = who.get("/no-such-page")
        assert response.status_code == 404
        assert not _shows_debug_details(response.content)


def test_under_debug_an_anonymous_500_shows_no_traceback(settings):
    import sys

    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory
    from django.views.debug import technical_500_response

    from webapp.middleware import AnonymousErrorPagesMiddleware

    settings.DEBUG = True

    def failing_view(request):
        try:
            raise RuntimeError("secret detail")
        except RuntimeError:
            return technical_500_response(request, *sys.exc_info())

    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    response = AnonymousErrorPagesMiddleware(failing_view)(request)
    assert response.status_code == 500
    assert b"secret detail" not in response.content and not _shows_debug_details(response.content)
