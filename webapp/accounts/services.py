"""Writes for accounts: users with a role, and the first operator of a fresh installation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import transaction

from webapp.accounts.models import OPERATOR_GROUP, VIEWER_GROUP

ROLES = (OPERATOR_GROUP, VIEWER_GROUP)


@transaction.atomic
def user_create(*, username: str, password: str, role: str) -> User:
    """Create a user in the group of ``role`` (operator or viewer) and return it.

    Raises:
        ValidationError: unknown role, a username already taken, or a password Django's validators refuse.
    """
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if User.objects.filter(username=username).exists():
        raise ValidationError(f"user {username!r} already exists")
    user = User(username=username, is_staff=role == OPERATOR_GROUP)
    from django.contrib.auth.password_validation import validate_password

    validate_password(password, user)
    user.set_password(password)
    user.full_clean()
    user.save()
    user.groups.add(Group.objects.get(name=role))
    return user


@dataclass(frozen=True)
class BootstrapResult:
    """The first operator and, when it was generated here, its password (shown once)."""

    username: str
    generated_password: str | None
    created: bool


def operator_bootstrap(*, username: str | None, password: str | None) -> BootstrapResult:
    """Make sure an operator exists: create ``username`` (or ``admin``) with ``password`` or a generated one.

    Returns the operator that exists afterwards; ``generated_password`` is set only when this call made it.
    """
    existing = User.objects.filter(groups__name=OPERATOR_GROUP, is_active=True).order_by("id").first()
    if existing is not None and (username is None or existing.username == username):
        return BootstrapResult(existing.username, None, created=False)
    name = username or "admin"
    if User.objects.filter(username=name).exists():
        return BootstrapResult(name, None, created=False)
    generated = None if password else secrets.token_urlsafe(12)
    user_create(username=name, password=password or generated or "", role=OPERATOR_GROUP)
    return BootstrapResult(name, generated, created=True)
