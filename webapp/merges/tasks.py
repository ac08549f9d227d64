"""Celery tasks of the merges app (queue ``merge``): thin wrappers that claim a job and run it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connections

from webapp.merges.selectors import merge_job_get, merge_job_is_live
from webapp.merges.services import merge_job_claim, merge_job_requeue_stale, merge_job_run

logger = logging.getLogger(__name__)


@shared_task(
    bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
    soft_time_limit=settings.MERGE_SOFT_TIME_LIMIT, time_limit=settings.MERGE_HARD_TIME_LIMIT,
)
def run_merge_job(self: Any, job_id: int) -> str:
    """Claim merge job ``job_id`` and run it to its end; return its final status.

    A delivery for a job another live worker runs waits (retries) until that worker finishes or is presumed
    dead; one for a finished, cancelled or unknown job does nothing (``skipped``).
    """
    if merge_job_claim(job_id=job_id, worker=self.request.hostname or "worker"):
        return merge_job_run(job=merge_job_get(job_id)).status
    if merge_job_is_live(job_id):
        raise self.retry(countdown=settings.MERGE_STALE_AFTER_S)
    return "skipped"


_stop_sweeping = threading.Event()


def _requeue_stale_jobs() -> None:
    try:
        requeued = merge_job_requeue_stale(older_than_s=settings.MERGE_STALE_AFTER_S)
    except Exception:  # a worker must start, and keep sweeping, even when the database is briefly unavailable
        logger.exception("could not requeue stale merge jobs")
        return
    if requeued:
        logger.info("requeued merge jobs whose worker died: %s", requeued)


def _sweep_until_shutdown() -> None:
    while not _stop_sweeping.wait(settings.MERGE_SWEEP_S):
        _requeue_stale_jobs()
        connections.close_all()  # this thread's own connections; the next sweep opens fresh ones


@worker_ready.connect
def resume_stale_merge_jobs(**_: Any) -> None:
    """When a worker starts, and then every MERGE_SWEEP_S seconds, requeue the jobs whose worker died mid-search.

    They resume from their checkpoint. The sweep runs in the worker's main process, beside the pool process
    that may be busy with a long job, so a job orphaned on another machine is resumed without a restart.
    """
    _requeue_stale_jobs()
    if settings.MERGE_SWEEP_S > 0:
        _stop_sweeping.clear()
        threading.Thread(target=_sweep_until_shutdown, name="merge-job-sweeper", daemon=True).start()


@worker_shutdown.connect
def stop_sweeping(**_: Any) -> None:
    """Stop the periodic sweep when the worker shuts down."""
    _stop_sweeping.set()
