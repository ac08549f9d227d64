"""Errors services raise that say more than "invalid": the API answers each with its own status."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class Conflict(ValidationError):
    """A request valid in itself that the current state refuses (a finished job cancelled, a rollback with
    nowhere to go): the API answers 409 where a plain ValidationError answers 400; pages show both alike."""
