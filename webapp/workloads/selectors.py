"""Reads of cameras, models, queries, analyses and demo seeds."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, QuerySet

from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query, WorkloadAnalysis


def camera_list() -> QuerySet[Camera]:
    """Return every camera with ``query_count`` annotated, by name."""
    return Camera.objects.annotate(query_count=Count("queries")).order_by("name")


def model_list() -> QuerySet[ModelEntry]:
    """Return every model with ``query_count`` annotated, by name."""
    return ModelEntry.objects.annotate(query_count=Count("queries")).order_by("name")


def query_list() -> QuerySet[Query]:
    """Return every query with its camera and model, by name."""
    return Query.objects.select_related("camera", "model").order_by("name")


def queries_ready() -> QuerySet[Query]:
    """Return the queries whose unmerged accuracy is measured (status ready), by name."""
    return query_list().filter(status=Query.Status.READY)


def queries_by_ids(ids: Iterable[int]) -> QuerySet[Query]:
    """Return the queries with these primary keys (unknown ids are simply absent), by name."""
    return query_list().filter(pk__in=list(ids))


def analysis_latest() -> WorkloadAnalysis | None:
    """Return the most recent workload analysis, or None."""
    return WorkloadAnalysis.objects.prefetch_related("queries").order_by("-created_at", "-pk").first()


def analysis_list() -> QuerySet[WorkloadAnalysis]:
    """Return the analyses, newest first."""
    return WorkloadAnalysis.objects.prefetch_related("queries").order_by("-created_at", "-pk")


def demo_seed_list() -> QuerySet[DemoSeed]:
    """Return the demo seeds, most recently updated first."""
    return DemoSeed.objects.order_by("-updated_at")
