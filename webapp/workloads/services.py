"""Writes of the workloads app: cameras, models, queries, workload export and analysis, the demo seed."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from torch import nn

from gemel_engine import zoo
from gemel_engine.accuracy import Measurement
from gemel_engine.data.frames import check_fps
from gemel_engine.data.sources import synthetic_config
from gemel_engine.demo import SCALES as DEMO_SCALES
from gemel_engine.demo import build_demo
from gemel_engine.errors import GemelError
from gemel_engine.layers import analyze_models
from gemel_engine.memory import model_param_bytes
from gemel_engine.plan import check_match_mode, check_model_name
from gemel_engine.queries import AccuracyTarget, Task
from gemel_engine.workload import CameraSpec, QueryEntry, Workload, camera_frames, measure_unmerged, query_data
from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.engine import (
    SAMPLING_KEYS,
    camera_has_ground_truth,
    camera_spec,
    live_workload,
    query_entry,
    weights_file,
)
from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query, WorkloadAnalysis
from webapp.workloads.sources import first_frame, source_normalize, thumbnail_png

logger = logging.getLogger(__name__)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(source, target)


def workload_export(*, queries: Iterable[Query], out_dir: Path, name: str = "dashboard") -> Path:
    """Write the engine workload of ``queries`` as ``out_dir/workload.json``, weights beside it.

    Each query's weights are hard-linked (or copied) to ``out_dir/weights/<query>.<suffix>`` so the folder
    is self-contained; ``gemel_engine.workload.Workload.load`` accepts the file.

    Returns:
        The path of the written workload.json.

    Raises:
        ValidationError: no queries, a query that is not ready (unmeasured), whose weights file is missing,
            or that the engine refuses.
    """
    chosen = list(queries)
    if not chosen:
        raise ValidationError("choose at least one query")
    not_ready = [query.name for query in chosen if query.status != Query.Status.READY]
    if not_ready:
        raise ValidationError(f"queries not ready (unmerged accuracy not measured): {', '.join(not_ready)}")
    out_dir = Path(out_dir)
    cameras = {}
    entries = []
    for query in chosen:
        source = weights_file(query.model)
        if not query.model.weights or not source.is_file():
            raise ValidationError(f"query {query.name!r}: the weights of model {query.model.name!r} are missing")
        relative = Path("weights") / f"{query.name}{source.suffix}"
        _link_or_copy(source, out_dir / relative)
        cameras.setdefault(query.camera_id, query.camera)
        try:
            entries.append(query_entry(query, weights=relative.as_posix()))
        except GemelError as exc:
            raise ValidationError(f"query {query.name!r}: {exc}") from None
    try:
        workload = Workload(
            name=name,
            cameras=tuple(camera_spec(camera) for camera in cameras.values()),
            queries=tuple(entries),
            root=out_dir.resolve(),
        )
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    return workload.save(out_dir / "workload.json")


# --- cameras -------------------------------------------------------------------------------------------

_MIN_SIDE, _MAX_SIDE = 16, 2048
# Longest latency bound a query may have: an hour.
_MAX_SLO_MS = 3_600_000.0


def _check_camera_numbers(*, fps: float, width: int, height: int) -> None:
    try:
        check_fps(fps, "camera")
    except GemelError as exc:
        raise ValidationError({"fps": str(exc)}) from None
    for label, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not _MIN_SIDE <= value <= _MAX_SIDE:
            raise ValidationError({label: f"{label} must be an integer in [{_MIN_SIDE}, {_MAX_SIDE}], got {value!r}"})


def _check_sampling(sampling: dict[str, Any] | None) -> dict[str, Any]:
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ValidationError(f"unknown sampling option(s) {unknown}; known: {', '.join(SAMPLING_KEYS)}")
    return sampling


def _store_thumbnail(camera: Camera, image: Any) -> None:
    old = camera.thumbnail.name if camera.thumbnail else ""
    camera.thumbnail.save(f"camera-{uuid.uuid4().hex}.png", ContentFile(thumbnail_png(image)), save=False)
    if old:
        _delete_media_on_commit(old)


def _delete_media_on_commit(name: str) -> None:
    transaction.on_commit(lambda: default_storage.delete(name) if default_storage.exists(name) else None)


def _unique_name(model: type[Camera | ModelEntry | Query], name: str, *, exclude: int | None = None) -> None:
    clash = model.objects.filter(name=name)
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    if clash.exists():
        raise ValidationError({"name": f"the name {name!r} is already taken"})


def camera_register(
    *, name: str, source: str, fps: float = 10.0, width: int = 64, height: int = 64,
    sampling: dict[str, Any] | None = None,
) -> Camera:
    """Register a camera after checking its source and decoding its first frame (kept as a thumbnail).

    The probe runs before the transaction, so a slow stream never holds the database's write lock.

    Returns:
        The saved camera.

    Raises:
        ValidationError: a taken or empty name, bad numbers, a refused source (see ``source_normalize``), or a
            source that does not deliver a frame (in time, for streams): "could not decode ...".
    """
    with about("name"):
        name = clean_name(name, "camera")
    _unique_name(Camera, name)
    _check_camera_numbers(fps=fps, width=width, height=height)
    with about("source"):
        source = source_normalize(source)
    camera = Camera(name=name, source=source, fps=fps, width=width, height=height, sampling=_check_sampling(sampling))
    with about("source"):
        image = first_frame(source, fps=fps)
    _store_thumbnail(camera, image)
    try:
        with transaction.atomic():
            _unique_name(Camera, name)
            camera.full_clean()
            camera.save()
    except Exception:
        camera.thumbnail.delete(save=False)  # no row, no file
        raise
    return camera


def camera_update(
    *, camera: Camera, name: str | None = None, source: str | None = None, fps: float | None = None,
    width: int | None = None, height: int | None = None,
) -> Camera:
    """Change a camera's name, source, rate or frame size; a new source is checked and probed again (before the
    transaction, so a slow stream never holds the database's write lock).

    Queries of the camera go back to pending (and are measured again) when its frames change.

    Returns:
        The saved camera.

    Raises:
        ValidationError: as for ``camera_register``.
    """
    with about("name"):
        new_name = camera.name if name is None else clean_name(name, "camera")
    fps = camera.fps if fps is None else fps
    width = camera.width if width is None else width
    height = camera.height if height is None else height
    _check_camera_numbers(fps=fps, width=width, height=height)
    frames_change = (fps, width, height) != (camera.fps, camera.width, camera.height)
    image = None
    if source is not None and source != camera.source:
        with about("source"):
            source = source_normalize(source)
            image = first_frame(source, fps=fps)
        frames_change = frames_change or source != camera.source
    with transaction.atomic():
        _unique_name(Camera, new_name, exclude=camera.pk)
        if image is not None:
            _store_thumbnail(camera, image)
            camera.source = source
        camera.name, camera.fps, camera.width, camera.height = new_name, fps, width, height
        if frames_change:
            camera.test_start_frame = None  # found again when its queries are measured
        camera.full_clean()
        camera.save()
        if frames_change:
            for query in camera.queries.all():
                _query_remeasure(query)
    return camera


@transaction.atomic
def camera_delete(*, camera: Camera) -> None:
    """Delete a camera and its thumbnail.

    Raises:
        ValidationError: queries still watch it (they are named).
    """
    _delete_unused(camera, "camera", camera.thumbnail)


def _delete_unused(row: Camera | ModelEntry, what: str, stored: Any) -> None:
    """Delete ``row`` and, after commit, its ``stored`` file; refuse while queries use it."""
    users = list(row.queries.values_list("name", flat=True))
    if users:
        raise ValidationError(f"{what} {row.name!r} is used by queries {', '.join(users)}; delete them first")
    if stored:
        _delete_media_on_commit(stored.name)
    row.delete()


# --- models --------------------------------------------------------------------------------------------

_FORBIDDEN_BUILDER_ARGS = frozenset({"weights", "weights_backbone", "progress"})
# Largest magnitude of a numeric builder argument: room for class counts, image sides and proposal counts,
# far below what overflows a builder's arithmetic (an anchor_scale or width_mult of 1e308).
MAX_BUILDER_NUMBER = 10_000
# Longest string builder argument, in characters.
MAX_BUILDER_STRING_CHARS = 100
_LISTED_ARCHS = 8


def _check_arch(arch: str) -> zoo.ArchSpec:
    try:
        return zoo.get_spec(arch)
    except GemelError:
        known = zoo.list_models()
        shown = ", ".join(known[:_LISTED_ARCHS])
        raise ValidationError(
            f"unknown architecture {arch!r}; known ones include {shown} ({len(known)} in all)"
        ) from None


def _check_builder_args(builder_args: Any) -> dict[str, Any]:
    if builder_args is None:
        return {}
    if not isinstance(builder_args, dict):
        raise ValidationError("builder_args must be a JSON object")
    for key, value in builder_args.items():
        if not isinstance(key, str) or key in _FORBIDDEN_BUILDER_ARGS:
            raise ValidationError(f"builder argument {key!r} is not allowed")
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ValidationError(f"builder argument {key!r} must be a number, string, boolean or null")
        # NaN and infinities fail the comparison too.
        if isinstance(value, int | float) and not abs(value) <= MAX_BUILDER_NUMBER:
            raise ValidationError(
                f"builder argument {key!r} must be a finite number within ±{MAX_BUILDER_NUMBER}, got {value!r}"
            )
        if isinstance(value, str) and len(value) > MAX_BUILDER_STRING_CHARS:
            raise ValidationError(f"builder argument {key!r} is longer than {MAX_BUILDER_STRING_CHARS} characters")
    return dict(builder_args)


def _build_meta(arch: str, builder_args: dict[str, Any]) -> nn.Module:
    # Whatever the builder raises for arguments it cannot take is the operator's input, never a server error.
    try:
        return zoo.get_model(arch, device="meta", **builder_args)
    except (TypeError, ValueError, ArithmeticError, GemelError) as exc:
        raise ValidationError(f"{arch} does not accept builder_args {builder_args}: {exc}") from None


def _max_weights_bytes() -> int:
    return int(settings.MAX_WEIGHTS_UPLOAD_MB) * 1024 * 1024


def _spool_upload(weights: UploadedFile, target: Path) -> str:
    """Write the upload to ``target`` chunk by chunk (stopping at the size limit) and return its sha256."""
    limit = _max_weights_bytes()
    digest = hashlib.sha256()
    written = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for chunk in weights.chunks():
            written += len(chunk)
            if written > limit:
                raise ValidationError(f"weights file is over the limit of {settings.MAX_WEIGHTS_UPLOAD_MB} MiB")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _checked_param_bytes(*, arch: str, builder_args: dict[str, Any], spooled: Path) -> int:
    """Return the parameter bytes of ``arch`` after checking the weights in ``spooled`` fit it key by key.

    Raises:
        ValidationError: builder arguments the architecture refuses, or weights unsafe, corrupt or unfit.
    """
    with about("builder_args"):
        model = _build_meta(arch, builder_args)
    try:
        state = zoo.read_state_dict(spooled, max_bytes=_max_weights_bytes())
        zoo.check_state_dict(model, state, source="weights")
    except GemelError as exc:
        raise ValidationError({"weights": str(exc).replace(str(spooled), "weights")}) from None
    return model_param_bytes(model)


@transaction.atomic
def _store_weights(*, name: str, arch: str, builder_args: dict[str, Any], spooled: Path, sha256: str,
                   param_bytes: int) -> ModelEntry:
    """Move checked weights from ``spooled`` into MEDIA_ROOT/weights/ and save their row (the file goes if it fails)."""
    _unique_name(ModelEntry, name)
    relative = f"weights/{uuid.uuid4().hex}{spooled.suffix}"
    final = Path(settings.MEDIA_ROOT) / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(spooled, final)
    entry = ModelEntry(
        name=name, arch=arch, builder_args=builder_args, weights=relative, weights_sha256=sha256,
        weights_size=final.stat().st_size, param_bytes=param_bytes,
    )
    try:
        entry.full_clean()
        entry.save()
    except Exception:
        final.unlink(missing_ok=True)
        raise
    return entry


def _register_spooled(*, name: str, arch: str, builder_args: dict[str, Any], spooled: Path, sha256: str) -> ModelEntry:
    """Check the weights in ``spooled`` (outside any transaction: it takes a while) and keep them."""
    _unique_name(ModelEntry, name)
    param_bytes = _checked_param_bytes(arch=arch, builder_args=builder_args, spooled=spooled)
    return _store_weights(name=name, arch=arch, builder_args=builder_args, spooled=spooled, sha256=sha256,
                          param_bytes=param_bytes)


def _spool_path(suffix: str) -> Path:
    return Path(settings.MEDIA_ROOT) / "uploads-tmp" / f"{uuid.uuid4().hex}{suffix}"


def _weights_suffix(filename: str) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in zoo.WEIGHT_SUFFIXES:
        raise ValidationError(f"weights must be one of {', '.join(zoo.WEIGHT_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    return suffix


def model_register(
    *, name: str, arch: str, weights: UploadedFile, builder_args: dict[str, Any] | None = None
) -> ModelEntry:
    """Register an uploaded model: weights read safely (safetensors, or ``torch.load(weights_only=True)``),
    checked key by key against ``arch`` built on the meta device with ``builder_args``.

    Nothing stays on disk when any check fails.

    Returns:
        The saved model, with its sha256, file size and parameter bytes.

    Raises:
        ValidationError: a taken name, an unknown architecture (a few known ones are listed), builder
            arguments the architecture refuses, a file over MAX_WEIGHTS_UPLOAD_MB (refused before reading
            it), an unsafe, corrupt or truncated file, or weights that do not fit (missing, unexpected and
            mis-shaped keys listed).
    """
    with about("name"):
        name = clean_name(name, "model")
    with about("arch"):
        _check_arch(arch)
    with about("builder_args"):
        builder_args = _check_builder_args(builder_args)
    with about("weights"):
        suffix = _weights_suffix(weights.name)
        if weights.size is not None and weights.size > _max_weights_bytes():
            raise ValidationError(f"weights file is over the limit of {settings.MAX_WEIGHTS_UPLOAD_MB} MiB")
    spooled = _spool_path(suffix)
    try:
        with about("weights"):
            sha256 = _spool_upload(weights, spooled)
        return _register_spooled(name=name, arch=arch, builder_args=builder_args, spooled=spooled, sha256=sha256)
    finally:
        spooled.unlink(missing_ok=True)


def model_register_file(*, name: str, arch: str, path: Path, builder_args: dict[str, Any] | None = None) -> ModelEntry:
    """Register a model from a weights file on this machine (the demo seed); the file is copied, not moved.

    Raises:
        ValidationError: as for ``model_register``.
    """
    name = clean_name(name, "model")
    _check_arch(arch)
    builder_args = _check_builder_args(builder_args)
    spooled = _spool_path(_weights_suffix(path.name))
    spooled.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(path, spooled)
        return _register_spooled(name=name, arch=arch, builder_args=builder_args, spooled=spooled,
                                 sha256=_file_sha256(spooled))
    finally:
        spooled.unlink(missing_ok=True)


@transaction.atomic
def model_update(*, model: ModelEntry, name: str) -> ModelEntry:
    """Rename a model (its weights and architecture are fixed once validated).

    Raises:
        ValidationError: an empty or taken name.
    """
    with about("name"):
        name = clean_name(name, "model")
    _unique_name(ModelEntry, name, exclude=model.pk)
    model.name = name
    model.save(update_fields=["name"])
    return model


@transaction.atomic
def model_delete(*, model: ModelEntry) -> None:
    """Delete a model and its weights file.

    Raises:
        ValidationError: queries still use it (they are named).
    """
    _delete_unused(model, "model", model.weights)


# --- queries -------------------------------------------------------------------------------------------


def _check_query_fields(
    *, name: str, camera: Camera, model: ModelEntry, task: Any, target_fraction: float, slo_ms: float
) -> dict[str, Any]:
    """Return the task JSON the engine normalised, after checking every field against camera and model."""
    try:
        check_model_name(name)
    except GemelError:
        raise ValidationError({"name": (
            f"query name {name!r} must be 1-64 letters, digits, '_' or '-' (it names the model in merged bundles)"
        )}) from None
    try:
        engine_task = Task.from_json(task)
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    try:
        AccuracyTarget(relative=target_fraction)
    except GemelError as exc:
        raise ValidationError({"target_fraction": str(exc)}) from None
    if (isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or not math.isfinite(slo_ms)
            or not 0 < slo_ms <= _MAX_SLO_MS):
        raise ValidationError({"slo_ms": (
            f"slo_ms must be a positive number of milliseconds up to {_MAX_SLO_MS:g}, got {slo_ms!r}"
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
    return engine_task.to_json()


def _enqueue_measure(query: Query) -> None:
    from webapp.workloads.tasks import query_measure_task

    query_measure_task.delay_on_commit(query.pk)


def _query_remeasure(query: Query) -> None:
    query.status, query.status_detail = Query.Status.PENDING, "waiting to measure the unmerged accuracy"
    query.unmerged_accuracy = query.chance_accuracy = query.unmerged_test = None
    query.save(update_fields=[
        "status", "status_detail", "unmerged_accuracy", "chance_accuracy", "unmerged_test", "updated_at",
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
    task_json = _check_query_fields(name=name, camera=camera, model=model, task=task,
                                    target_fraction=target_fraction, slo_ms=slo_ms)
    _unique_name(Query, name)
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
    task_json = _check_query_fields(name=name, camera=query.camera, model=query.model, task=new_task,
                                    target_fraction=target_fraction, slo_ms=slo_ms)
    _unique_name(Query, name, exclude=query.pk)
    task_changed = task_json != Task.from_json(query.task).to_json()
    query.name, query.task, query.target_fraction, query.slo_ms = name, task_json, target_fraction, slo_ms
    query.save()
    if task_changed:
        _query_remeasure(query)
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
        measured, val_frames, test_start = _measure(query)
    except (GemelError, OSError, RuntimeError, ValueError) as exc:
        Query.objects.filter(pk=query_id).update(
            status=Query.Status.FAILED, status_detail=f"measuring failed: {exc}", updated_at=timezone.now()
        )
        logger.warning("measuring query %s failed", query_id, exc_info=True)
    else:
        test = measured.unmerged_test
        detail = f"measured on {val_frames} validation and {test.frames if test else 0} held-out test frames"
        Query.objects.filter(pk=query_id, status=Query.Status.MEASURING).update(
            status=Query.Status.READY, unmerged_accuracy=measured.unmerged_accuracy,
            chance_accuracy=measured.chance_accuracy, unmerged_test=test.to_json() if test else None,
            status_detail=detail, updated_at=timezone.now(),
        )
        Camera.objects.filter(pk=query.camera_id).update(test_start_frame=test_start)
    query.refresh_from_db()
    return query


def _measure(query: Query) -> tuple[QueryEntry, int, int]:
    """Return the measured query entry, its validation frame count and its camera's first test frame (source
    index)."""
    workload = live_workload([query])
    entry = workload.queries[0]
    frames = camera_frames(workload, workload.cameras[0], cache_dir=Path(settings.MEDIA_ROOT) / "frame-cache")
    labelled = query_data(workload, entry, frames)
    test_start = int(frames.test.indices.min())
    return measure_unmerged(entry, workload.load_model(entry), labelled), len(labelled.val), test_start


# --- analysis ------------------------------------------------------------------------------------------


def workload_analyze(*, queries: Iterable[Query], mode: str = "shape", user: Any = None) -> WorkloadAnalysis:
    """Analyse which layers the queries' models could share, on models built on the meta device.

    Returns:
        The saved analysis; ``result`` is the engine's ``WorkloadAnalysis.to_dict()`` (models named by query).

    Raises:
        ValidationError: no queries, or an unknown match mode.
    """
    chosen = list(queries)
    if not chosen:
        raise ValidationError("choose at least one query to analyse")
    try:
        check_match_mode(mode)
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    models: dict[str, nn.Module] = {}
    for query in chosen:
        models[query.name] = _build_meta(query.model.arch, dict(query.model.builder_args or {}))
    result = analyze_models(models, mode=mode, archs={q.name: q.model.arch for q in chosen}).to_dict()  # type: ignore[arg-type]
    with transaction.atomic():  # the models are built before: the write lock is held only to save
        analysis = WorkloadAnalysis.objects.create(
            mode=mode, result=result, created_by=user if getattr(user, "is_authenticated", False) else None
        )
        analysis.queries.set(chosen)
    return analysis


# --- demo seed -----------------------------------------------------------------------------------------


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


def _demo_build(scale: str) -> None:
    spec = DEMO_SCALES[scale]
    out_dir = _demo_dir(scale)
    cameras = {camera.name: camera for camera in spec.cameras}
    registered: set[str] = set()

    def register(entry: QueryEntry) -> None:
        _demo_register(entry, cameras[entry.query.camera], out_dir)
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
            entry = next(e for e in spec.queries if e.name == event["query"])
            register(dataclasses.replace(
                entry, weights=f"weights/{entry.name}.safetensors", unmerged_accuracy=event["accuracy"],
                chance_accuracy=event["chance"],
                unmerged_test=Measurement.from_json(event["test"]) if event.get("test") else None,
            ))

    try:
        saved = out_dir / "workload.json"
        workload = Workload.load(saved) if saved.is_file() else build_demo(scale, out_dir, progress=progress)
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


def _demo_register(entry: QueryEntry, spec: CameraSpec, out_dir: Path) -> Query:
    """Register (or reuse) the camera, model and query of one trained demo query."""
    camera = Camera.objects.filter(name=spec.name).first()
    if camera is None:
        _, scene = synthetic_config(spec.source)
        size = spec.sampling.size or (scene.width, scene.height)
        sampling = {key: value for key, value in spec.sampling.to_json().items() if key != "size" and value is not None}
        camera = camera_register(
            name=spec.name, source=spec.source, fps=scene.fps, width=size[0], height=size[1],
            sampling={
                **sampling, "val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction,
                "gap_seconds": spec.gap_seconds,
            },
        )
    elif camera.source != spec.source:
        raise ValidationError(f"a camera called {spec.name!r} exists with another source; rename it to seed the demo")
    model = ModelEntry.objects.filter(name=entry.name).first() or model_register_file(
        name=entry.name, arch=entry.query.arch, path=out_dir / str(entry.weights), builder_args=entry.recipe_args()
    )
    query = Query.objects.filter(name=entry.name).first()
    if query is not None:
        return query
    return Query.objects.create(
        name=entry.name, camera=camera, model=model, task=entry.query.task.to_json(),
        target_fraction=entry.query.target.relative or 0.95, status=Query.Status.READY,
        unmerged_accuracy=entry.unmerged_accuracy, chance_accuracy=entry.chance_accuracy,
        unmerged_test=entry.unmerged_test.to_json() if entry.unmerged_test else None,
        status_detail="measured while the demo was built",
    )
