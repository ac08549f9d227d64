"""Each kind of work has its own Celery queue, routed in one place; workers take them as run.py says."""

from __future__ import annotations

from django.conf import settings

from webapp.celery import app
from webapp.stack import ALL_QUEUES, celery_worker_command


def _queue(task: str) -> str:
    route = app.amqp.router.route({}, task)
    return route["queue"].name


def test_merges_measurements_and_demo_builds_each_go_to_their_own_queue():
    assert _queue("webapp.merges.tasks.run_merge_job") == settings.QUEUE_MERGE == "merge"
    assert _queue("webapp.workloads.tasks.query_measure_task") == settings.QUEUE_MEASURE == "measure"
    assert _queue("webapp.workloads.tasks.demo_seed_task") == settings.QUEUE_DEMO == "demo"
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed <= set(ALL_QUEUES)  # a default worker takes every routed queue


def test_a_worker_command_names_the_queues_it_takes():
    command = celery_worker_command(queues=("demo", "measure"), name="builder")
    assert command[command.index("--queues") + 1] == "demo,measure"
    assert "builder@%h" in command
    default = celery_worker_command()
    assert default[default.index("--queues") + 1] == ",".join(ALL_QUEUES)
