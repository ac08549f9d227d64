"""Training unmerged models from the dashboard: a labelled camera's frames become a model and its query."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gemel_engine.errors import GemelError
from gemel_engine.queries import AccuracyTarget, Task
from gemel_engine.queries import Query as EngineQuery
from gemel_engine.train import default_recipe
from gemel_engine.workload import QueryEntry, Workload, camera_frames, train_unmerged
from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.engine import camera_classes, camera_labelled_by_own_model, camera_spec
from webapp.workloads.models import Camera, ModelEntry, Query, TrainingRun
from webapp.workloads.services.common import check_unique_name
from webapp.workloads.services.model_entries import model_register_file
from webapp.workloads.services.queries import check_query_fields, query_create

logger = logging.getLogger(__name__)

# Most optimizer steps a training run may take (the demo recipes take 150-300).
MAX_TRAIN_STEPS = 5000
# Progress is written to the run every this many steps (and at the last one).
STEP_REPORT_EVERY = 10
TRAINING_DIR = "training"
# A run that has written no progress for this long lost its worker (the task is redelivered): it is taken over.
TRAINING_STALE = timedelta(minutes=30)


def _engine_task(task: Any, camera: Camera) -> Task:
    try:
        return Task.from_json(task, vocabulary=camera_classes(camera))
    except GemelError as exc:
        raise ValidationError(str(exc)) from None


def training_start(
    *, name: str, camera: Camera, arch: str, task: dict[str, Any], steps: int | None = None,
    target_fraction: float = 0.95, slo_ms: float = 500.0,
) -> TrainingRun:
    """Queue the training of a new unmerged model for a query on ``camera``, from scratch on its labelled frames.

    When it succeeds a model and a query, both called ``name``, are registered (the query is then measured as
    every query is).

    Returns:
        The queued run.

    Raises:
        ValidationError: a name a model, a query or another run already has, a camera whose labels would come from
            the model being trained (neither annotations nor a synthetic scene's ground truth), an unknown
            architecture, a task the camera or the architecture cannot serve, or steps outside 1..MAX_TRAIN_STEPS.
    """
    with about("name"):
        name = clean_name(name, "model")
    check_unique_name(ModelEntry, name)
    check_unique_name(Query, name)
    active = (TrainingRun.Status.QUEUED, TrainingRun.Status.TRAINING)
    if TrainingRun.objects.filter(name=name, status__in=active).exists():
        raise ValidationError({"name": f"a training run called {name!r} is already under way"})
    if camera_labelled_by_own_model(camera):
        raise ValidationError({"camera": (
            f"camera {camera.name!r} has no labels to train on: upload YOLO or COCO annotations for it, or name a "
            "teacher detector that labels it, first"
        )})
    engine_task = _engine_task(task, camera)
    head = ModelEntry(name=name, arch=arch, builder_args={"num_classes": engine_task.num_outputs})
    task_json = check_query_fields(name=name, camera=camera, model=head, task=task,
                                   target_fraction=target_fraction, slo_ms=slo_ms)
    steps = default_recipe(engine_task).steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_STEPS:
        raise ValidationError({"steps": f"steps must be an integer in [1, {MAX_TRAIN_STEPS}], got {steps!r}"})
    run = TrainingRun.objects.create(
        name=name, camera=camera, arch=arch, task=task_json, target_fraction=target_fraction, slo_ms=slo_ms,
        steps=steps, detail="waiting for a worker",
    )
    from webapp.workloads.tasks import training_run_task

    training_run_task.delay_on_commit(run.pk)
    return run


def _update(run_id: int, **fields: Any) -> None:
    TrainingRun.objects.filter(pk=run_id).update(updated_at=timezone.now(), **fields)


def training_run(*, run_id: int) -> TrainingRun | None:
    """Train a queued run's model, register it and its query, and record the outcome on the run.

    Returns:
        The run, succeeded (with its query) or failed (with the reason); None when it was neither queued nor
        abandoned (training, with no progress written for ``TRAINING_STALE``: its worker died).
    """
    abandoned = Q(status=TrainingRun.Status.TRAINING, updated_at__lt=timezone.now() - TRAINING_STALE)
    claimed = TrainingRun.objects.filter(Q(status=TrainingRun.Status.QUEUED) | abandoned, pk=run_id).update(
        status=TrainingRun.Status.TRAINING, detail="reading the camera's labelled frames", updated_at=timezone.now()
    )
    if claimed != 1:
        return None
    run = TrainingRun.objects.select_related("camera").get(pk=run_id)
    weights = Path(settings.MEDIA_ROOT) / TRAINING_DIR / f"run-{run.pk}.safetensors"
    started = time.monotonic()
    try:
        task = Task.from_json(run.task, vocabulary=camera_classes(run.camera))
        spec = camera_spec(run.camera)
        entry = QueryEntry(EngineQuery(run.name, spec.name, run.arch, task, AccuracyTarget(run.target_fraction)))
        workload = Workload("training", (spec,), (entry,), Path(settings.MEDIA_ROOT))
        frames = camera_frames(workload, spec)
        args = dataclasses.replace(default_recipe(task), steps=run.steps)

        def report(event: dict[str, Any]) -> None:
            step = int(event.get("step", 0))
            if event.get("type") == "train.step" and (step % STEP_REPORT_EVERY == 0 or step == run.steps):
                _update(run_id, steps_done=step, detail=f"training: step {step} of {run.steps}, "
                        f"loss {float(event['loss']):.3f}, {time.monotonic() - started:.0f} s")

        trained, _, labelled = train_unmerged(workload, entry, frames, args, weights=weights, progress=report)
        with transaction.atomic():
            model = model_register_file(name=run.name, arch=run.arch, path=weights,
                                        builder_args={"num_classes": task.num_outputs})
            query = query_create(name=run.name, camera=run.camera, model=model, task=run.task,
                                 target_fraction=run.target_fraction, slo_ms=run.slo_ms)
            test, chance = trained.unmerged_test, trained.chance_test
            verdict = "" if chance is None or test is None else f" (always the commonest class: {chance.describe()})"
            _update(run_id, status=TrainingRun.Status.SUCCEEDED, query=query, steps_done=run.steps, detail=(
                f"trained on {len(labelled.train)} frames in {time.monotonic() - started:.0f} s; held-out test "
                f"accuracy {test.describe() if test else '-'}{verdict}; the query is measured next"
            ))
    except (GemelError, ValidationError, OSError, RuntimeError, ValueError) as exc:
        reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        _update(run_id, status=TrainingRun.Status.FAILED, detail=f"training failed: {reason}")
        logger.warning("training run %s failed", run_id, exc_info=True)
    finally:
        weights.unlink(missing_ok=True)
    run.refresh_from_db()
    return run
