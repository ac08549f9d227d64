"""Every form shows each error once: under the field it is about, naming that field, or once at the top."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from tests.webapp.test_workloads_factories import make_camera, make_model, synthetic_source
from webapp.merges.models import MergeJob
from webapp.workloads.models import Camera, ModelEntry, Query

pytestmark = pytest.mark.django_db
CAMERA = {"name": "gate", "source": synthetic_source("gate"), "fps": 5, "width": 32, "height": 32}


def errors_of(body: str, field: str) -> str:
    """Return the text of the error block under ``field`` (empty when it has none)."""
    match = re.search(rf'<div class="error field-errors" id="id_{field}_error">(.*?)</div>', body, re.S)
    return match.group(1) if match else ""


def assert_once_under(body: str, field: str, label: str, message: str) -> None:
    """``message`` appears exactly once in the page, in ``field``'s error block, after the field's label."""
    shown = escape(message)
    assert body.count(shown) == 1, f"{message!r} shown {body.count(shown)} times"
    assert shown in errors_of(body, field), f"{message!r} is not under {field}"
    assert f"<p>{escape(label)}: " in errors_of(body, field)
    assert body.index(f'for="id_{field}"') < body.index(f'id="id_{field}_error"')


def test_an_unknown_source_is_shown_once_under_the_source(operator_client):
    response = operator_client.post(reverse("camera_create"), {**CAMERA, "source": "ftp://cam.local/live"})
    assert response.status_code == 400
    assert_once_under(response.content.decode(), "source", "Source", "unknown camera source scheme 'ftp'")
    assert not Camera.objects.exists()


def test_a_duplicate_name_is_shown_once_under_the_name(operator_client):
    make_camera("gate")
    response = operator_client.post(reverse("camera_create"), CAMERA)
    assert_once_under(response.content.decode(), "name", "Name", "the name 'gate' is already taken")


def test_a_text_file_posing_as_safetensors_is_shown_once_under_the_weights_as_not_a_safetensors_file(
    operator_client, tmp_path
):
    fake = tmp_path / "notes.safetensors"
    fake.write_text("these are my notes, not weights\n" * 20)
    with fake.open("rb") as handle:
        response = operator_client.post(reverse("model_create"), {
            "name": "tiny", "arch": "mobilenet_v3_small", "builder_args": '{"num_classes": 2}', "weights": handle,
        })
    body = response.content.decode()
    assert_once_under(body, "weights", "Weights", "weights: not a safetensors file")
    assert "header too large" not in body.lower() and "HeaderTooLarge" not in body
    assert not ModelEntry.objects.exists()


def test_a_target_above_one_is_shown_once_under_the_target(operator_client):
    camera, model = make_camera(), make_model()
    response = operator_client.post(reverse("query_create"), {
        "name": "north_cars", "camera": camera.pk, "model": model.pk, "kind": "presence", "classes": ["car"],
        "target_fraction": 1.5, "slo_ms": 500,
    })
    assert_once_under(response.content.decode(), "target_fraction", "Accuracy target (× unmerged)",
                      "accuracy target must be in (0, 1], got 1.5")
    assert not Query.objects.exists()


def test_a_required_field_left_empty_is_named_under_that_field_not_above_the_next(operator_client):
    response = operator_client.post(reverse("camera_create"), {**CAMERA, "source": ""})
    body = response.content.decode()
    assert body.count("This field is required.") == 1
    assert "<p>Source: This field is required.</p>" in errors_of(body, "source")
    # The error block closes before the next field's label opens.
    assert body.index('id="id_source_error"') < body.index('for="id_fps"')
    assert 'aria-describedby="id_source_helptext id_source_error"' in body


def test_an_error_about_no_field_is_shown_once_at_the_top(operator_client):
    response = operator_client.post(reverse("analysis"), {"mode": "shape"})
    body = response.content.decode()
    assert body.count("no query yet: register cameras, models and queries") == 1
    assert body.index('id="form-errors"') < body.index('for="id_mode"')


def test_the_merge_form_shows_its_error_once_under_the_queries(operator_client):
    response = operator_client.post(reverse("merge_jobs"), {"strategy": "gemel"})
    body = response.content.decode()
    message = "tick the queries to merge, or 'Every ready query'"
    assert body.count(escape(message)) == 1 and escape(message) in errors_of(body, "queries")
    assert not MergeJob.objects.exists()
