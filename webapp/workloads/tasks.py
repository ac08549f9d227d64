"""Celery tasks of the workloads app: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from webapp.workloads import services


@shared_task(acks_late=True, soft_time_limit=900, time_limit=960)
def query_measure_task(query_id: int) -> str | None:
    """Measure the unmerged accuracy of query ``query_id``; returns its status, or None if nothing was claimed."""
    query = services.query_measure(query_id=query_id)
    return None if query is None else query.status


@shared_task(acks_late=True, soft_time_limit=settings.MERGE_SOFT_TIME_LIMIT, time_limit=settings.MERGE_HARD_TIME_LIMIT)
def demo_seed_task(scale: str) -> str:
    """Build and register the demo workload of ``scale``; returns the seed's final status."""
    return services.demo_seed(scale=scale).status
