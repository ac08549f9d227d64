"""Seeding the engine demo: building it on a worker under a file lock, then registering its cameras, models
and queries."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from gemel_engine.data.sources import synthetic_config
from gemel_engine.demo import SCALES as DEMO_SCALES
from gemel_engine.demo import build_demo, built_demo
from gemel_engine.errors import GemelError
from gemel_engine.workload import CameraSpec, QueryEntry, query_from_json
from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query
from webapp.workloads.services.cameras import camera_register
from webapp.workloads.services.model_entries import model_register_file

logger = logging.getLogger(__name__)


def demo_seed_start(*, scale: str) -> str:
    """Queue building and registering the engine demo of ``scale`` on a worker.

    Returns:
        The Celery task id (the seed's row shows progress on the cameras page); while a build of this scale is
        running, its task id, and nothing is queued.

    Raises:
        ValidationError: an unknown scale.
    """
    from webapp.workloads.tasks import demo_seed_task

    _check_scale(scale)
    if demo_build_running(scale=scale):
        return DemoSeed.objects.get(scale=scale).celery_task_id
    task_id = uuid.uuid4().hex
    with transaction.atomic():
        seed, _ = DemoSeed.objects.get_or_create(scale=scale)
        if seed.status != DemoSeed.Status.READY:
            seed.status, seed.detail = DemoSeed.Status.QUEUED, "waiting for a worker"
        seed.celery_task_id = task_id
        seed.save()
        transaction.on_commit(lambda: demo_seed_task.apply_async(args=[scale], task_id=task_id))
    return task_id


def _demo_dir(scale: str) -> Path:
    return Path(settings.MEDIA_ROOT) / "demo" / scale


@contextlib.contextmanager
def _demo_build_lock(scale: str) -> Iterator[bool]:
    """Hold the scale's build lock while the block runs; yields False (and holds nothing) if another process has it.

    An OS file lock, so a build whose process died (a stopped worker, Ctrl-C) never blocks the next one.
    """
    path = _demo_dir(scale).with_name(f".{scale}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_build_running(*, scale: str) -> bool:
    """Return whether a process is building (or registering) the demo of ``scale`` right now."""
    with _demo_build_lock(scale) as free:
        return not free


def _check_scale(scale: str) -> None:
    if scale not in DEMO_SCALES:
        raise ValidationError(f"unknown demo scale {scale!r}; known: {', '.join(DEMO_SCALES)}")


def _seed_progress(scale: str, **fields: Any) -> None:
    DemoSeed.objects.filter(scale=scale).update(updated_at=timezone.now(), **fields)


def demo_seed(*, scale: str) -> DemoSeed:
    """Build the engine demo of ``scale`` under MEDIA_ROOT/demo/<scale> and register its cameras, models and
    queries (ready, with the accuracies the build measured), each query as soon as its model is trained.

    Idempotent: a finished build on disk is reused, and so are cameras, models and queries already registered.
    One build per scale at a time: while another process builds it, this call returns its row at once.

    Returns:
        The seed's row, ready (or failed with the reason).

    Raises:
        ValidationError: an unknown scale.
    """
    _check_scale(scale)
    spec = DEMO_SCALES[scale]
    DemoSeed.objects.get_or_create(scale=scale)
    with _demo_build_lock(scale) as mine:
        if mine:
            _seed_progress(scale, status=DemoSeed.Status.BUILDING, detail="starting", queries_total=len(spec.queries))
            _demo_build(scale)
    return DemoSeed.objects.get(scale=scale)


def demo_name_prefix(scale: str) -> str:
    """Return what the dashboard puts before the names of the demo ``scale``'s cameras, models and queries: nothing,
    unless a camera of another demo scale, registered before, already has one of its cameras' names (``tiny`` and
    ``small`` both have a ``north`` camera, for instance); then ``"<scale>_"`` for all of them."""
    others = {(camera.name, camera.source) for name, other in DEMO_SCALES.items() if name != scale
              for camera in other.cameras}
    for camera in DEMO_SCALES[scale].cameras:
        taken = Camera.objects.filter(name=camera.name).exclude(source=camera.source).values_list("source", flat=True)
        if any((camera.name, source) in others for source in taken):
            return f"{scale}_"
    return ""


def _demo_build(scale: str) -> None:
    spec = DEMO_SCALES[scale]
    out_dir = _demo_dir(scale)
    cameras = {camera.name: camera for camera in spec.cameras}
    registered: set[str] = set()
    prefix = demo_name_prefix(scale)

    def register(entry: QueryEntry, train_frame_seconds: float | None = None) -> None:
        _demo_register(entry, cameras[entry.query.camera], out_dir, prefix=prefix,
                       train_frame_seconds=train_frame_seconds)
        registered.add(entry.name)
        _seed_progress(scale, queries_registered=len(registered), detail=f"registered {entry.name}")

    def progress(event: dict[str, Any]) -> None:
        if event.get("type") == "demo.training":
            _seed_progress(scale, detail=f"training {event['query']} ({event['arch']}, {event['steps']} steps)")
        elif event.get("type") == "demo.step":
            left = math.ceil(event["seconds_left"] / 60)
            _seed_progress(scale, detail=f"training {event['query']} ({event['arch']}): step {event['step']} of "
                                         f"{event['steps']}, about {left} min left for this model")
        elif event.get("type") == "demo.trained":
            register(query_from_json(event["entry"]), train_frame_seconds=event.get("train_frame_seconds"))

    try:
        workload = built_demo(out_dir) or build_demo(scale, out_dir, progress=progress)
        for entry in workload.queries:
            register(entry)
    except Exception as exc:  # the row must not stay "building"; unexpected errors still reach the caller
        detail = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc) or type(exc).__name__
        _seed_progress(scale, status=DemoSeed.Status.FAILED, detail=f"failed: {detail}")
        logger.warning("demo seed %s failed", scale, exc_info=True)
        if not isinstance(exc, GemelError | ValidationError | OSError):
            raise
    else:
        _seed_progress(scale, status=DemoSeed.Status.READY, detail=f"{len(registered)} queries ready")


def _demo_register(
    entry: QueryEntry, spec: CameraSpec, out_dir: Path, *, prefix: str, train_frame_seconds: float | None = None
) -> Query:
    """Register (or reuse) the camera, model and query of one trained demo query, each named with ``prefix``, with
    the seconds per training frame the build measured (None when it was not trained by this build)."""
    camera_name, name = prefix + spec.name, prefix + entry.name
    camera = Camera.objects.filter(name=camera_name).first()
    if camera is None:
        _, scene = synthetic_config(spec.source)
        size = spec.sampling.size or (scene.width, scene.height)
        sampling = {key: value for key, value in spec.sampling.to_json().items() if key != "size" and value is not None}
        camera = camera_register(
            name=camera_name, source=spec.source, fps=scene.fps, width=size[0], height=size[1],
            sampling={
                **sampling, "val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction,
                "gap_seconds": spec.gap_seconds,
            },
        )
    elif camera.source != spec.source:
        raise ValidationError(f"a camera called {camera_name!r} exists with another source; rename it to seed the demo")
    model = ModelEntry.objects.filter(name=name).first() or model_register_file(
        name=name, arch=entry.query.arch, path=out_dir / str(entry.weights), builder_args=entry.recipe_args()
    )
    query = Query.objects.filter(name=name).first()
    if query is not None:
        return query
    return Query.objects.create(
        name=name, camera=camera, model=model, task=entry.query.task.to_json(),
        target_fraction=entry.query.target.relative or 0.95, status=Query.Status.READY,
        unmerged_accuracy=entry.unmerged_accuracy, chance_accuracy=entry.chance_accuracy,
        unmerged_test=entry.unmerged_test.to_json() if entry.unmerged_test else None,
        chance_test=entry.chance_test.to_json() if entry.chance_test else None,
        chance_lead=entry.chance_lead.to_json() if entry.chance_lead else None,
        status_detail="measured while the demo was built", train_frame_seconds=train_frame_seconds,
    )
