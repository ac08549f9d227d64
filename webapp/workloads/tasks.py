"""Celery tasks of the workloads app: thin wrappers that take ids and call one service."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from webapp.workloads import services

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, soft_time_limit=900, time_limit=960)
def query_measure_task(query_id: int) -> str | None:
    """Measure the unmerged accuracy of query ``query_id``; returns its status, or None if nothing was claimed."""
    query = services.query_measure(query_id=query_id)
    return None if query is None else query.status


@shared_task(acks_late=True, soft_time_limit=settings.MERGE_SOFT_TIME_LIMIT, time_limit=settings.MERGE_HARD_TIME_LIMIT)
def demo_seed_task(scale: str) -> str:
    """Build and register the demo workload of ``scale``; returns the seed's final status."""
    return services.demo_seed(scale=scale).status


@shared_task(acks_late=True, soft_time_limit=settings.MERGE_SOFT_TIME_LIMIT, time_limit=settings.MERGE_HARD_TIME_LIMIT)
def training_run_task(run_id: int) -> str | None:
    """Train the model of training run ``run_id``; returns its final status, or None if nothing was claimed."""
    run = services.training_run(run_id=run_id)
    return None if run is None else run.status


@worker_ready.connect
def queue_pending_measurements(**_: Any) -> None:
    """When a worker starts, queue the measurement of every query still pending (one whose task was lost, or
    one a migration sent back to be measured again); claiming is atomic, so a query queued twice is measured
    once."""
    try:
        queued = services.query_measure_pending()
    except Exception:  # a worker must start even when the database is briefly unavailable
        logger.exception("could not queue pending query measurements")
        return
    if queued:
        logger.info("queued the measurement of pending queries: %s", queued)
