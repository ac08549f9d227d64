"""`manage.py demo_seed --scale tiny [--wait]`: build the engine demo and register its cameras, models, queries."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gemel_engine.demo import SCALES
from webapp.workloads.models import DemoSeed
from webapp.workloads.services import demo_seed, demo_seed_start


class Command(BaseCommand):
    help = (
        "Build a demo workload (synthetic cameras, models trained from scratch) and register it. Without --wait "
        "a Celery worker does it and the command prints the task id; with --wait it runs here until done."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--scale", default="tiny", choices=sorted(SCALES), help="demo size (default tiny)")
        parser.add_argument("--wait", action="store_true", help="build here and wait instead of queueing it")

    def handle(self, *args: Any, **options: Any) -> None:
        scale = options["scale"]
        try:
            if not options["wait"]:
                self.stdout.write(demo_seed_start(scale=scale))
                return
            seed = demo_seed(scale=scale)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if seed.status != DemoSeed.Status.READY:
            raise CommandError(f"demo {scale}: {seed.detail}")
        self.stdout.write(f"demo {scale}: {seed.detail}")
