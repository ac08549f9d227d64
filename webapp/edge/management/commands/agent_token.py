"""`manage.py agent_token NAME`: create an agent token and print it (the only time it is shown)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webapp.edge.services import agent_token_create


class Command(BaseCommand):
    help = "Create an edge agent token and print it on stdout (store it: only its hash is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="what the token is for, e.g. the node's name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            _, plain = agent_token_create(name=options["name"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(plain)
