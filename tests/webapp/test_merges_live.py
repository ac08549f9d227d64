"""Merge jobs live: the job consumer, and whole jobs on real Celery workers (progress, and a SIGKILLed worker).

The worker tests start real `celery worker` processes that share this test's database, Redis and media
folder, with the smallest retraining the engine allows and a one-second heartbeat (stale after three).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from tests.waiting import wait_until
from tests.webapp.conftest import stack_environment
from tests.webapp.test_merges_factories import FIVE_ROUNDS, make_job, make_ready_queries
from webapp.asgi import application
from webapp.merges.models import MergeJob
from webapp.merges.services import merge_job_cancel, merge_job_start
from webapp.stack import ManagedProcess, celery_worker_command

Status = MergeJob.Status
TRANSACTIONAL = pytest.mark.django_db(transaction=True)
HEARTBEAT_S, STALE_AFTER_S, SWEEP_S = 1, 3, 1
WORKER_ENV = {
    "GEMEL_MERGE_ROUND_MAX_STEPS": "1", "GEMEL_MERGE_ROUND_BATCH_SIZE": "8", "GEMEL_MERGE_DEVICE": "cpu",
    "GEMEL_MERGE_HEARTBEAT_S": str(HEARTBEAT_S), "GEMEL_MERGE_STALE_AFTER_S": str(STALE_AFTER_S),
    "GEMEL_MERGE_SWEEP_S": str(SWEEP_S),
    "OMP_NUM_THREADS": "1",  # the test machine is shared: one torch thread per worker
}


async def _connect(path: str, user=None) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [(b"origin", b"http://testserver")]
    if user is not None:
        browser = Client()
        await database_sync_to_async(browser.force_login)(user)
        session = browser.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


@pytest.mark.asyncio
@TRANSACTIONAL
async def test_it_refuses_an_anonymous_websocket():
    job = await database_sync_to_async(make_job)()
    communicator, connected, code = await _connect(f"/ws/merge-jobs/{job.pk}/")
    assert not connected and code == 4401
    await communicator.disconnect()


@pytest.mark.asyncio
@TRANSACTIONAL
async def test_it_refuses_a_websocket_for_an_unknown_job(viewer):
    communicator, connected, code = await _connect("/ws/merge-jobs/9999/", viewer)
    assert not connected and code == 4404
    await communicator.disconnect()


@pytest.mark.asyncio
@TRANSACTIONAL
async def test_it_forwards_a_jobs_progress_after_commit(operator, viewer):
    job = await database_sync_to_async(make_job)()
    communicator, connected, _ = await _connect(f"/ws/merge-jobs/{job.pk}/", viewer)
    assert connected
    await database_sync_to_async(merge_job_cancel)(job=job, user=operator)
    message = await communicator.receive_json_from(timeout=5)
    assert message["event"]["type"] == "job.cancelled" and message["event"]["seq"] == 1
    assert message["job"]["status"] == "cancelled" and message["bundles"] == []
    await communicator.disconnect()


@pytest.fixture
def start_worker(redis_url, tmp_path) -> Iterator[Callable[[str], ManagedProcess]]:
    """Start real merge workers (tiny search settings); each is stopped at the end."""
    workers: list[ManagedProcess] = []

    def start(name: str) -> ManagedProcess:
        env = {**stack_environment(redis_url, Path(settings.MEDIA_ROOT)), **WORKER_ENV}
        worker = ManagedProcess(name, celery_worker_command(name=name), env, tmp_path / f"{name}.log").start()
        workers.append(worker)
        worker.wait_for_log("ready.", timeout=120)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str, worker: ManagedProcess) -> None:
    wait_until(condition, timeout=timeout, what=what, context=worker.log_tail)


def _finished(job_id: int) -> bool:
    return MergeJob.objects.get(pk=job_id).status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


@pytest.mark.asyncio
@TRANSACTIONAL
async def test_it_runs_a_job_on_a_real_worker_and_streams_its_progress(operator, start_worker):
    queries = await database_sync_to_async(make_ready_queries)()
    job = await database_sync_to_async(merge_job_start)(
        queries=queries, strategy="gemel", budget_minutes=None, user=operator
    )
    communicator, connected, _ = await _connect(f"/ws/merge-jobs/{job.pk}/", operator)
    assert connected
    worker = await asyncio.to_thread(start_worker, "merge-a")
    messages = []
    while not messages or not messages[-1]["job"]["finished"]:
        try:
            messages.append(await communicator.receive_json_from(timeout=120))
        except TimeoutError:
            raise AssertionError(f"no progress within 120 s; worker log:\n{worker.log_tail()}") from None
    await communicator.disconnect()
    job = await database_sync_to_async(MergeJob.objects.get)(pk=job.pk)
    assert job.status == Status.SUCCEEDED, job.error
    assert job.attempts == 1 and job.worker.startswith("merge-a@")
    types = [m["event"]["type"] for m in messages if m["event"]]
    assert types[0] == "job.claimed" and "config.accepted" in types and types[-1] == "search.finished"
    pushed = [b for m in messages for b in m["bundles"]]
    assert len(pushed) >= 2 and all(b["deployable"] for b in pushed)  # the unmerged start and accepted ones
    events = await database_sync_to_async(lambda: list(job.events.values_list("type", flat=True)))()
    assert events == types
    bundle_count = await database_sync_to_async(job.bundles.count)()
    assert bundle_count == len(pushed) == types.count("config.accepted") + 1


@TRANSACTIONAL
def test_two_merge_jobs_of_different_sites_run_at_once_on_two_workers(operator, start_worker):
    from webapp.workloads.services import site_create

    depot = site_create(name="depot")
    workers = [start_worker("merge-a"), start_worker("merge-b")]  # both idle first: each takes one job, not both
    jobs = [
        merge_job_start(queries=make_ready_queries(FIVE_ROUNDS), strategy="gemel", budget_minutes=None, user=operator),
        merge_job_start(queries=make_ready_queries(FIVE_ROUNDS, camera="gate", site=depot), strategy="gemel",
                        budget_minutes=None, user=operator),
    ]
    both_running = {}

    def running_together() -> bool:
        rows = list(MergeJob.objects.filter(pk__in=[job.pk for job in jobs]))
        if all(row.status == Status.RUNNING and row.bundles.exists() for row in rows):
            both_running.update({row.pk: row.worker for row in rows})
            return True
        return False

    _wait_for(running_together, timeout=240, what="both jobs to run and accept a configuration at once",
              worker=workers[0])
    assert len(set(both_running.values())) == 2  # each on its own worker, holding its own claim
    for job in jobs:
        _wait_for(lambda job=job: _finished(job.pk), timeout=300, what=f"job {job.pk} to finish", worker=workers[1])
        job.refresh_from_db()
        assert job.status == Status.SUCCEEDED, job.error
    assert {job.site.name for job in jobs} == {"default", "depot"}


@TRANSACTIONAL
def test_it_resumes_a_job_from_its_checkpoint_after_its_worker_is_killed(operator, start_worker):
    job = merge_job_start(queries=make_ready_queries(FIVE_ROUNDS), strategy="gemel", budget_minutes=None, user=operator)
    first = start_worker("merge-a")
    _wait_for(lambda: job.bundles.filter(index__gte=1).exists(), timeout=180, what="a first accepted configuration",
              worker=first)
    first.signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    job.refresh_from_db()
    assert job.status == Status.RUNNING, "the search ended before the worker was killed: make it longer"
    before = {b.index: b.files for b in job.bundles.all()}
    rounds_before = max(b.round for b in job.bundles.all())
    _wait_for(lambda: (timezone.now() - MergeJob.objects.get(pk=job.pk).heartbeat_at).total_seconds() > STALE_AFTER_S,
              timeout=30, what="the heartbeat to go stale", worker=first)
    second = start_worker("merge-b")
    _wait_for(lambda: _finished(job.pk), timeout=240, what="the resumed job to finish", worker=second)
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.attempts == 2 and job.worker.startswith("merge-b@")
    after = {b.index: b.files for b in job.bundles.all()}
    assert all(after[index] == files for index, files in before.items())  # nothing accepted before was lost
    assert max(after) > max(before) and job.result["rounds"] > rounds_before  # it went on after the kill
    assert list(after) == list(range(len(after)))
    types = list(job.events.values_list("type", flat=True))
    assert "job.requeued" in types
    resumed = job.events.filter(type="search.started").order_by("seq").last()
    assert resumed.payload["resumed"] is True and resumed.payload["rounds"] >= 1
    first_round_after = job.events.filter(type="round.started", seq__gt=resumed.seq).order_by("seq").first()
    assert first_round_after.payload["round"] == resumed.payload["rounds"] + 1  # no finished round was redone


@TRANSACTIONAL
def test_a_running_worker_resumes_a_job_orphaned_by_another_without_restarting(operator, start_worker):
    from webapp.celery import app as celery_app

    job = merge_job_start(queries=make_ready_queries(), strategy="gemel", budget_minutes=None, user=operator)
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge("merge")  # its message went down with the worker that took it
    # Celery logs "ready." only after the worker_ready handlers ran, so its start-up sweep has passed (and left
    # the job alone: it was still queued then). Only the periodic sweep can find the orphan made below.
    worker = start_worker("merge-b")
    gone = timezone.now() - timedelta(seconds=10 * STALE_AFTER_S)
    MergeJob.objects.filter(pk=job.pk).update(status=Status.RUNNING, attempts=1, worker="merge-a@gone",
                                              heartbeat_at=gone)
    _wait_for(lambda: _finished(job.pk), timeout=180, what="the orphaned job to be swept up and finish",
              worker=worker)
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.attempts == 2 and job.worker.startswith("merge-b@")
    assert job.events.filter(type="job.requeued").exists()
