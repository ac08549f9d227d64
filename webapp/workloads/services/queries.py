"""Queries: creating, editing, deleting, and measuring their unmerged models on a worker."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gemel_engine import zoo
from gemel_engine.data.sources import synthetic_config
from gemel_engine.errors import GemelError
from gemel_engine.plan import check_model_name
from gemel_engine.queries import AccuracyTarget, Task
from gemel_engine.workload import QueryEntry, camera_frames, measure_query
from webapp.workloads.engine import (
    camera_classes,
    camera_has_ground_truth,
    camera_label_source,
    live_workload,
    stored_task,
)
from webapp.workloads.models import Camera, ModelEntry, Query
from webapp.workloads.services.common import MAX_SLO_MS, check_unique_name

logger = logging.getLogger(__name__)


def check_query_fields(
    *, name: str, camera: Camera, model: ModelEntry, task: Any, target_fraction: float, slo_ms: float
) -> dict[str, Any]:
    """Return the task JSON the engine normalised, after checking every field against camera and model.

    Raises:
        ValidationError: a name the bundles cannot carry, a malformed task, classes the camera never shows, a
            model whose head or kind does not fit the task, a target outside (0, 1], or a bad latency bound.
    """
    try:
        check_model_name(name)
    except GemelError:
        raise ValidationError({"name": (
            f"query name {name!r} must be 1-64 letters, digits, '_' or '-' (it names the model in merged bundles)"
        )}) from None
    try:
        engine_task = Task.from_json(task, vocabulary=camera_classes(camera))
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    try:
        AccuracyTarget(relative=target_fraction)
    except GemelError as exc:
        raise ValidationError({"target_fraction": str(exc)}) from None
    if (isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or not math.isfinite(slo_ms)
            or not 0 < slo_ms <= MAX_SLO_MS):
        raise ValidationError({"slo_ms": (
            f"slo_ms must be a positive number of milliseconds up to {MAX_SLO_MS:g}, got {slo_ms!r}"
        )})
    spec = zoo.get_spec(model.arch)
    if engine_task.is_detection != (spec.task == "detection"):
        needed = "detection" if engine_task.is_detection else "classification"
        raise ValidationError(
            f"a {engine_task.kind} task needs a {needed} model, and {model.arch} is a {spec.task} model"
        )
    num_classes = (model.builder_args or {}).get("num_classes", spec.default_num_classes)
    if num_classes != engine_task.num_outputs:
        raise ValidationError(
            f"model {model.name!r} has {num_classes} outputs but a {engine_task.kind} task over "
            f"{len(engine_task.classes)} class(es) needs {engine_task.num_outputs}"
        )
    if camera_has_ground_truth(camera.source):
        scene_classes = synthetic_config(camera.source)[1].classes
        missing = [c for c in engine_task.classes if c not in scene_classes]
        if missing:
            raise ValidationError(f"camera {camera.name!r} never shows {', '.join(missing)}; it shows "
                                  f"{', '.join(scene_classes)}")
    return stored_task(engine_task)


def _enqueue_measure(query: Query) -> None:
    from webapp.workloads.tasks import query_measure_task

    query_measure_task.delay_on_commit(query.pk)


def query_remeasure(query: Query) -> None:
    """Mark ``query`` pending with its measured figures cleared and queue its measurement after the commit."""
    query.status, query.status_detail = Query.Status.PENDING, "waiting to measure the unmerged accuracy"
    query.unmerged_accuracy = query.chance_accuracy = query.unmerged_test = None
    query.chance_test = query.chance_lead = None
    query.save(update_fields=[
        "status", "status_detail", "unmerged_accuracy", "chance_accuracy", "unmerged_test", "chance_test",
        "chance_lead", "updated_at",
    ])
    _enqueue_measure(query)


@transaction.atomic
def query_create(
    *, name: str, camera: Camera, model: ModelEntry, task: dict[str, Any], target_fraction: float = 0.95,
    slo_ms: float = 500.0,
) -> Query:
    """Create a query and queue the measurement of its unmerged accuracy (status pending → measuring → ready).

    Returns:
        The saved query, pending.

    Raises:
        ValidationError: a name the bundles cannot carry or already taken, a malformed task, classes the
            camera never shows, a model whose head or kind does not fit the task, a target outside (0, 1],
            or a latency bound that is not positive.
    """
    name = (name or "").strip()
    task_json = check_query_fields(name=name, camera=camera, model=model, task=task,
                                    target_fraction=target_fraction, slo_ms=slo_ms)
    check_unique_name(Query, name)
    query = Query.objects.create(
        name=name, camera=camera, model=model, task=task_json, target_fraction=target_fraction, slo_ms=slo_ms,
        status=Query.Status.PENDING, status_detail="waiting to measure the unmerged accuracy",
    )
    _enqueue_measure(query)
    return query


@transaction.atomic
def query_update(
    *, query: Query, name: str | None = None, task: dict[str, Any] | None = None,
    target_fraction: float | None = None, slo_ms: float | None = None,
) -> Query:
    """Change a query's name, task, target or latency bound; a new task is measured again.

    ``task`` holds the task fields to change: those it leaves out keep their value (an edit form that does
    not show ``min_box_area`` must not reset it).

    Raises:
        ValidationError: as for ``query_create``.
    """
    name = query.name if name is None else name.strip()
    if task is None:
        new_task = query.task
    elif isinstance(task, dict):
        new_task = {**(query.task or {}), **task}
    else:
        new_task = task  # refused below, with the reason
    target_fraction = query.target_fraction if target_fraction is None else target_fraction
    slo_ms = query.slo_ms if slo_ms is None else slo_ms
    task_json = check_query_fields(name=name, camera=query.camera, model=query.model, task=new_task,
                                    target_fraction=target_fraction, slo_ms=slo_ms)
    check_unique_name(Query, name, exclude=query.pk)
    task_changed = task_json != stored_task(Task.from_json(query.task, vocabulary=camera_classes(query.camera)))
    query.name, query.task, query.target_fraction, query.slo_ms = name, task_json, target_fraction, slo_ms
    query.save()
    if task_changed:
        query_remeasure(query)
    return query


@transaction.atomic
def query_delete(*, query: Query) -> None:
    """Delete a query.

    Raises:
        ValidationError: a merge job used it (its history would lose the query).
    """
    if query.merge_jobs.exists():
        raise ValidationError(f"query {query.name!r} belongs to merge jobs; it is kept for their history")
    query.delete()


def query_measure_pending() -> list[str]:
    """Queue the measurement of every pending query; return their names."""
    pending = list(Query.objects.filter(status=Query.Status.PENDING).order_by("pk"))
    for query in pending:
        _enqueue_measure(query)
    return [query.name for query in pending]


# A query left measuring this long lost its worker (the task's hard time limit is shorter): measure it again.
MEASURE_STALE = timedelta(minutes=20)


def query_measure(*, query_id: int) -> Query | None:
    """Measure a pending query's unmerged model on its camera's validation frames (its accuracy and the commonest
    class's) and on its held-out test frames (accuracy with a 95% interval), the way the engine measures every
    model.

    Claims the query once (pending → measuring); a query another worker is measuring, or a deleted one, is left
    alone, but one left measuring past MEASURE_STALE (its worker died; the task is redelivered) is taken over.

    Returns:
        The query, ready with its accuracies or failed with the reason; None when there was nothing to claim.
    """
    abandoned = Q(status=Query.Status.MEASURING, updated_at__lt=timezone.now() - MEASURE_STALE)
    claimed = Query.objects.filter(Q(status=Query.Status.PENDING) | abandoned, pk=query_id).update(
        status=Query.Status.MEASURING, status_detail="measuring the unmerged accuracy", updated_at=timezone.now()
    )
    if claimed != 1:
        return None
    query = Query.objects.select_related("camera", "model").get(pk=query_id)
    try:
        measured, splits, test_start = _measure(query)
    except (GemelError, OSError, RuntimeError, ValueError) as exc:
        Query.objects.filter(pk=query_id).update(
            status=Query.Status.FAILED, status_detail=f"measuring failed: {exc}", updated_at=timezone.now()
        )
        logger.warning("measuring query %s failed", query_id, exc_info=True)
    else:
        test = measured.unmerged_test
        detail = (f"measured on {splits['val']} validation and {test.frames if test else 0} held-out test frames "
                  f"(trained on {splits['train']}); labels: {camera_label_source(query.camera)}")
        Query.objects.filter(pk=query_id, status=Query.Status.MEASURING).update(
            status=Query.Status.READY, unmerged_accuracy=measured.unmerged_accuracy,
            chance_accuracy=measured.chance_accuracy, unmerged_test=test.to_json() if test else None,
            chance_test=measured.chance_test.to_json() if measured.chance_test else None,
            chance_lead=measured.chance_lead.to_json() if measured.chance_lead else None,
            status_detail=detail, updated_at=timezone.now(),
        )
        Camera.objects.filter(pk=query.camera_id).update(test_start_frame=test_start)
    query.refresh_from_db()
    return query


def _measure(query: Query) -> tuple[QueryEntry, dict[str, int], int]:
    """Return the measured query entry, its camera's frames per split (train, val, test) and its first test frame
    (source index)."""
    workload = live_workload([query])
    frames = camera_frames(workload, workload.cameras[0], cache_dir=Path(settings.MEDIA_ROOT) / "frame-cache")
    measured, val_frames, test_start = measure_query(workload, workload.queries[0], frames)
    return measured, {"train": len(frames.train), "val": val_frames, "test": len(frames.test)}, test_start
