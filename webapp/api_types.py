"""Bounded types the API schemas and pages share, so every router refuses the same out-of-range input."""

from __future__ import annotations

from typing import Annotated

from ninja import Schema
from pydantic import Field


class Detail(Schema):
    """Every error answer's body: one readable line (webapp/api.py turns service errors into it)."""

    detail: str


# The largest id or count a database integer column holds; anything above is refused before the database.
MAX_DATABASE_INT = 2**63 - 1
# A primary key in a request body.
DbId = Annotated[int, Field(ge=1, le=MAX_DATABASE_INT)]
# Most ids one request may list.
MAX_IDS = 1000


def database_id(raw: str) -> int | None:
    """Return ``raw`` as a primary key, or None when it is not one.

    Only ASCII digits count: ``str.isdigit`` also accepts "²" and other digits ``int`` refuses, and ``int``
    accepts spaces, signs and "_" that no id is written with.
    """
    if not raw.isascii() or not raw.isdecimal():
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_DATABASE_INT else None
