"""`manage.py create_user NAME --role operator|viewer` (password from --password or GEMEL_NEW_PASSWORD)."""

from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webapp.accounts.services import ROLES, user_create


class Command(BaseCommand):
    help = "Create a dashboard user with a role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=ROLES, default="viewer")
        parser.add_argument("--password", default=os.environ.get("GEMEL_NEW_PASSWORD"))

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["password"]:
            raise CommandError("give --password or set GEMEL_NEW_PASSWORD")
        try:
            user_create(username=options["username"], password=options["password"], role=options["role"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"created {options['role']} {options['username']}")
