"""Each kind of work has its own Celery queue, routed in one place; workers take them as run.py starts them, so
a measurement never waits for a long build."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from tests.waiting import wait_until
from tests.webapp.conftest import stack_environment
from tests.webapp.test_workloads_factories import PRESENCE, make_camera, make_model, synthetic_source
from webapp.celery import app
from webapp.stack import ALL_QUEUES, celery_worker_command, worker_processes
from webapp.workloads.services import query_create


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


@pytest.mark.django_db(transaction=True)
def test_a_measurement_runs_while_a_long_training_run_holds_the_builder(redis_url, tmp_path):
    from webapp.workloads.models import Query, TrainingRun
    from webapp.workloads.services import training_start
    from webapp.workloads.services.training import MAX_TRAIN_STEPS

    env = {**stack_environment(redis_url, Path(settings.MEDIA_ROOT)), "OMP_NUM_THREADS": "1"}
    workers = worker_processes(env, tmp_path, merge_workers=1)  # as make run starts them, with one merge worker
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_for_log("ready.", timeout=120)
        builder = workers[-1]
        camera = make_camera("north", source=synthetic_source("north", frames=400))
        run = training_start(name="long_run", camera=camera, arch="resnet18", task=PRESENCE, steps=MAX_TRAIN_STEPS)
        wait_until(lambda: TrainingRun.objects.get(pk=run.pk).steps_done > 0, timeout=300,
                   what="the builder to start the long training run", context=builder.log_tail)
        query = query_create(name="north_vehicles", camera=camera, model=make_model(), task=PRESENCE)
        wait_until(lambda: Query.objects.get(pk=query.pk).status in (Query.Status.READY, Query.Status.FAILED),
                   timeout=300, what="the measurement beside the training run", context=workers[0].log_tail)
        assert Query.objects.get(pk=query.pk).status == Query.Status.READY
        assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.TRAINING  # the builder is still on it
    finally:
        for worker in workers:
            worker.stop()
