"""Refusals tied to the input they are about, so a form shows each one once, under its own field.

Services raise ``ValidationError``; inside ``about("source")`` a plain one becomes an error about ``source``. The
API joins the messages as before (``exc.messages``); a form page hands the error to ``add_service_error``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django import forms
from django.core.exceptions import ValidationError


@contextlib.contextmanager
def about(field: str) -> Iterator[None]:
    """Re-raise a ValidationError from the block as an error about ``field`` (one already about a field stays)."""
    try:
        yield
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            raise
        raise ValidationError({field: exc.error_list}) from None


def add_service_error(form: forms.Form, exc: ValidationError) -> None:
    """Add a service's refusal to ``form``: under the field it is about when the form has that field, else at the
    top (among the errors about no field)."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        form.add_error(field if field in form.fields else None, errors)
