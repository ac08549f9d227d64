"""Registering, editing and deleting cameras."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from gemel_engine.data.frames import check_fps
from gemel_engine.errors import GemelError
from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.engine import SAMPLING_KEYS
from webapp.workloads.models import Camera
from webapp.workloads.services.common import check_unique_name, delete_media_on_commit, delete_unused
from webapp.workloads.services.queries import query_remeasure
from webapp.workloads.sources import first_frame, source_normalize, thumbnail_png

_MIN_SIDE, _MAX_SIDE = 16, 2048


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
        delete_media_on_commit(old)


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
    check_unique_name(Camera, name)
    _check_camera_numbers(fps=fps, width=width, height=height)
    with about("source"):
        source = source_normalize(source)
    camera = Camera(name=name, source=source, fps=fps, width=width, height=height, sampling=_check_sampling(sampling))
    with about("source"):
        image = first_frame(source, fps=fps)
    _store_thumbnail(camera, image)
    try:
        with transaction.atomic():
            check_unique_name(Camera, name)
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
        check_unique_name(Camera, new_name, exclude=camera.pk)
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
                query_remeasure(query)
    return camera


@transaction.atomic
def camera_delete(*, camera: Camera) -> None:
    """Delete a camera and its thumbnail.

    Raises:
        ValidationError: queries still watch it (they are named).
    """
    delete_unused(camera, "camera", camera.thumbnail)
