"""Helpers the workloads services share: unique names, deleting rows and files nothing uses, bounds."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction

from webapp.workloads.models import Camera, ModelEntry, Query, Site

# Longest latency bound a query may have: an hour.
MAX_SLO_MS = 3_600_000.0


def delete_media_on_commit(name: str) -> None:
    """Delete the stored media file ``name`` once the current transaction commits (never on a rollback)."""
    transaction.on_commit(lambda: default_storage.delete(name) if default_storage.exists(name) else None)


def check_unique_name(
    model: type[Camera | ModelEntry | Query | Site], name: str, *, exclude: int | None = None,
) -> None:
    """Refuse a ``name`` another row of ``model`` (other than ``exclude``) already has.

    Raises:
        ValidationError: on the ``name`` field.
    """
    clash = model.objects.filter(name=name)
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    if clash.exists():
        raise ValidationError({"name": f"the name {name!r} is already taken"})


def delete_unused(row: Camera | ModelEntry, what: str, stored: Any) -> None:
    """Delete ``row`` and, after commit, its ``stored`` file; refuse while queries use it."""
    users = list(row.queries.values_list("name", flat=True))
    if users:
        raise ValidationError(f"{what} {row.name!r} is used by queries {', '.join(users)}; delete them first")
    taught = list(row.taught_cameras.values_list("name", flat=True)) if isinstance(row, ModelEntry) else []
    if taught:
        raise ValidationError(f"{what} {row.name!r} labels cameras {', '.join(taught)} as their teacher; "
                              "give them another teacher or annotations first")
    if stored:
        delete_media_on_commit(stored.name)
    row.delete()
