"""Writes for accounts: users with a role, and the first operator of a fresh installation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import transaction

from webapp.accounts.models import OPERATOR_GROUP, VIEWER_GROUP

ROLES = (OPERATOR_GROUP, VIEWER_GROUP)


def roles_ensure() -> None:
    """Create the operator and viewer groups and the operate permission unless they exist.

    The first migration creates them; this keeps a database whose rows were flushed (tests) or restored
    without them usable.
    """
    content_type, _ = ContentType.objects.get_or_create(app_label="accounts", model="role")
    operate, _ = Permission.objects.get_or_create(
        content_type=content_type, codename="operate",
        defaults={"name": "Can change cameras, models, merge jobs and deployments"},
    )
    operator, _ = Group.objects.get_or_create(name=OPERATOR_GROUP)
    operator.permissions.add(operate)
    Group.objects.get_or_create(name=VIEWER_GROUP)


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
    roles_ensure()
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
