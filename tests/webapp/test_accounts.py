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
