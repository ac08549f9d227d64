"""Bounded types the API schemas share, so every router refuses the same out-of-range input with 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# The largest id or count a database integer column holds; anything above is refused before the database.
MAX_DATABASE_INT = 2**63 - 1
# A primary key in a request body.
DbId = Annotated[int, Field(ge=1, le=MAX_DATABASE_INT)]
# Most ids one request may list.
MAX_IDS = 1000
