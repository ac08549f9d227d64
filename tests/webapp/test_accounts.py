from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from tests.webapp.conftest import PASSWORD
from webapp.accounts.selectors import user_is_operator, user_role
from webapp.accounts.services import operator_bootstrap, user_create

pytestmark = pytest.mark.django_db


def test_it_gives_operators_the_operate_permission_and_viewers_none(operator, viewer):
    assert user_is_operator(operator)
    assert not user_is_operator(viewer)
    assert (user_role(operator), user_role(viewer)) == ("operator", "viewer")


def test_it_refuses_an_unknown_role_a_taken_name_and_a_weak_password(operator):
    with pytest.raises(ValidationError, match="role must be one of"):
        user_create(username="x", password=PASSWORD, role="admin")
    with pytest.raises(ValidationError, match="already exists"):
        user_create(username="olivia", password=PASSWORD, role="viewer")
    with pytest.raises(ValidationError):
        user_create(username="weak", password="123", role="viewer")


def test_bootstrap_generates_a_password_once_and_then_reuses_the_operator():
    first = operator_bootstrap(username=None, password=None)
    assert first.created and first.generated_password
    again = operator_bootstrap(username=None, password=None)
    assert not again.created and again.generated_password is None
    assert again.username == first.username


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_a_signed_in_viewer_sees_the_overview_with_their_role(viewer_client):
    response = viewer_client.get("/")
    assert response.status_code == 200
    assert b"viewer" in response.content


def test_login_with_the_right_password_signs_in(client, operator):
    response = client.post("/login/", {"username": "olivia", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_the_api_and_its_description_need_a_session(viewer_client):
    anonymous = Client()
    assert anonymous.get("/api/merge-jobs").status_code == 401
    assert anonymous.get("/api/openapi.json").status_code == 302
    assert anonymous.get("/api/docs").status_code == 302
    spec = viewer_client.get("/api/openapi.json")
    assert spec.status_code == 200
    assert "/api/agent/register" in spec.json()["paths"]
    assert viewer_client.get("/api/docs").status_code == 200


def test_malformed_api_input_gets_422_with_one_readable_detail(operator_client):
    response = operator_client.post("/api/merge-jobs", data="{}", content_type="application/json")
    assert response.status_code == 422
    body = response.json()
    assert isinstance(body["detail"], str) and "queries" in body["detail"]
    assert body["errors"]


def _sign_in(client, username: str, password: str, address: str = "203.0.113.7"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_after_five_wrong_passwords_even_the_right_one_is_refused_for_a_while(client, operator, settings):
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER):
        assert _sign_in(client, "olivia", "guess").status_code == 200
    refused = _sign_in(client, "olivia", PASSWORD)
    assert refused.status_code == 429
    assert b"Too many failed sign-ins. Try again in about 15 minute(s)." in refused.content
    assert client.get("/").status_code == 302  # not signed in
    assert _sign_in(client, "OLIVIA", PASSWORD).status_code == 429  # the same account whatever its case


def test_the_limit_is_per_account_and_a_success_clears_it(client, operator, viewer, settings):
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER - 1):
        _sign_in(client, "olivia", "guess")
    assert _sign_in(client, "olivia", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER - 1):
        _sign_in(client, "olivia", "guess")
    assert _sign_in(client, "olivia", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER):
        _sign_in(client, "olivia", "guess")
    assert _sign_in(client, "victor", PASSWORD).status_code == 302  # another account is not locked out


def test_one_address_guessing_many_accounts_is_refused(client, operator, settings):
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 6
    for index in range(6):
        _sign_in(client, f"user{index}", "guess", address="198.51.100.9")
    assert _sign_in(client, "olivia", PASSWORD, address="198.51.100.9").status_code == 429
    assert _sign_in(client, "olivia", PASSWORD, address="198.51.100.10").status_code == 302


def test_the_admin_sign_in_is_throttled_like_the_dashboards(client, operator, settings):
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER):
        response = client.post("/admin/login/", {"username": "olivia", "password": "guess"}, REMOTE_ADDR="203.0.113.7")
        assert response.status_code == 200
    refused = client.post("/admin/login/", {"username": "olivia", "password": PASSWORD}, REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 429
    assert b"Too many failed sign-ins. Try again in about 15 minute(s)." in refused.content
    assert client.get("/admin/").status_code == 302  # not signed in
    assert _sign_in(client, "olivia", PASSWORD).status_code == 429  # one count for every sign-in page


def test_failures_on_the_dashboard_and_the_admin_add_up(client, operator, settings):
    half = settings.LOGIN_MAX_FAILURES_PER_USER // 2
    for _ in range(half):
        _sign_in(client, "olivia", "guess")
    for _ in range(settings.LOGIN_MAX_FAILURES_PER_USER - half):
        client.post("/admin/login/", {"username": "olivia", "password": "guess"}, REMOTE_ADDR="203.0.113.8")
    refused = client.post("/admin/login/", {"username": "olivia", "password": PASSWORD}, REMOTE_ADDR="203.0.113.9")
    assert refused.status_code == 429


def test_the_admin_sign_in_still_signs_an_operator_in(client, operator):
    response = client.post("/admin/login/", {"username": "olivia", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
