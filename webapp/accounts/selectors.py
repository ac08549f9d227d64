"""Reads for accounts."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from webapp.accounts.models import OPERATE_PERMISSION, OPERATOR_GROUP, VIEWER_GROUP


def user_is_operator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Return whether ``user`` may change things (the operate permission; superusers have it)."""
    return bool(user.is_authenticated and user.is_active and user.has_perm(OPERATE_PERMISSION))


def user_role(user: AbstractBaseUser | AnonymousUser) -> str | None:
    """Return ``operator``, ``viewer`` (any other signed-in user) or None for anonymous users."""
    if not user.is_authenticated:
        return None
    return OPERATOR_GROUP if user_is_operator(user) else VIEWER_GROUP
