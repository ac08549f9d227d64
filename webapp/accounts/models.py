"""Roles: an operator changes things, a viewer only looks. Both are Django groups."""

from django.db import models

OPERATOR_GROUP = "operator"
VIEWER_GROUP = "viewer"
OPERATE_PERMISSION = "accounts.operate"


class Role(models.Model):
    """Holds the role permissions; it has no table of its own."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("operate", "Can change cameras, models, merge jobs and deployments")]
