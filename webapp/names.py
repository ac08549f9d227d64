"""Names people and agents give things (cameras, models, tokens, nodes): one rule for all of them."""

from __future__ import annotations

from django.core.exceptions import ValidationError

# Longest name, in characters.
MAX_NAME_CHARS = 100


def clean_name(name: str | None, what: str) -> str:
    """Return ``name`` stripped of surrounding spaces.

    Raises:
        ValidationError: empty, longer than MAX_NAME_CHARS, or holding control or invisible formatting
            characters (NUL, right-to-left override, zero-width), which make a name display as something it
            is not: "report\\u202egnp.exe" shows as "reportexe.png".
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError(f"{what} name is required")
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(f"{what} name is at most {MAX_NAME_CHARS} characters")
    if not name.isprintable():
        raise ValidationError(f"{what} name must not contain control or invisible formatting characters")
    return name
