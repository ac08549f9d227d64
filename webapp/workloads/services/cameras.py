"""Registering, editing and deleting cameras."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from gemel_engine.data.annotations import YOLO_NAME_FILES, AnnotationVocabulary
from gemel_engine.data.frames import check_fps
from gemel_engine.errors import GemelError
from gemel_engine.queries import Task
from gemel_engine.teacher import COCO_DETECTION_LABELS, TeacherError
from gemel_engine.workload import check_annotations
from gemel_engine.zoo import get_spec
from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.engine import SAMPLING_KEYS, camera_spec, teacher_spec
from webapp.workloads.models import Camera, ModelEntry, Site
from webapp.workloads.services.common import check_unique_name, delete_media_on_commit, delete_unused
from webapp.workloads.services.queries import query_remeasure
from webapp.workloads.services.sites import site_or_default
from webapp.workloads.sources import first_frame, source_normalize, thumbnail_png

_MIN_SIDE, _MAX_SIDE = 16, 2048
# Bounds of an uploaded YOLO zip: label files in it, and bytes of any one file once unpacked.
MAX_LABEL_FILES = 50_000
MAX_LABEL_FILE_BYTES = 1 << 20
# ... and of all its label files together, once unpacked.
MAX_LABEL_BYTES = 64 << 20
ANNOTATIONS_DIR = "annotations"


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
    sampling: dict[str, Any] | None = None, site: Site | None = None,
) -> Camera:
    """Register a camera of ``site`` (the default site when None) after checking its source and decoding its
    first frame (kept as a thumbnail).

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
    camera = Camera(name=name, site=site_or_default(site), source=source, fps=fps, width=width, height=height,
                    sampling=_check_sampling(sampling))
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
    width: int | None = None, height: int | None = None, site: Site | None = None,
) -> Camera:
    """Change a camera's name, site, source, rate or frame size; a new source is checked and probed again (before
    the transaction, so a slow stream never holds the database's write lock). A camera moves to another site only
    while no query watches it (a query's merge jobs and deployments stay with the site it was made in).

    Queries of the camera go back to pending (and are measured again) when its frames change.

    Returns:
        The saved camera.

    Raises:
        ValidationError: as for ``camera_register``; a new site for a camera that queries watch.
    """
    if site is not None and site.pk != camera.site_id and camera.queries.exists():
        users = ", ".join(camera.queries.order_by("name").values_list("name", flat=True)[:5])
        raise ValidationError({"site": f"camera {camera.name!r} is watched by queries ({users}) made in site "
                                       f"{camera.site.name!r}; delete them before moving it to {site.name!r}"})
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
            if camera.annotations:
                _check_annotations_fit(camera, source)
        frames_change = frames_change or source != camera.source
    with transaction.atomic():
        check_unique_name(Camera, new_name, exclude=camera.pk)
        if image is not None:
            _store_thumbnail(camera, image)
            camera.source = source
        camera.name, camera.fps, camera.width, camera.height = new_name, fps, width, height
        if site is not None:
            camera.site = site
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
    annotations = _annotations_folder(camera.annotations)
    delete_unused(camera, "camera", camera.thumbnail)
    if annotations is not None:
        transaction.on_commit(lambda: shutil.rmtree(annotations, ignore_errors=True))


def _annotations_folder(annotations: str) -> Path | None:
    """Return the folder an upload of annotations was stored in (holding its ``labels/`` or ``coco.json``)."""
    return (Path(settings.MEDIA_ROOT) / annotations).parent if annotations else None


def _checked_annotations(camera: Camera, *, source: str, labels: str, annotations: str) -> AnnotationVocabulary:
    """Return the vocabulary of ``annotations`` after reading them against every frame of ``source`` as
    ``camera`` samples it (``check_annotations``); paths in it and in refusals read ``annotations/…``, not the
    server's folders.

    Raises:
        ValidationError: the annotations do not match the frames, or cannot be read.
    """
    candidate = Camera(pk=camera.pk, name=camera.name, source=source, fps=camera.fps, width=camera.width,
                       height=camera.height, sampling=camera.sampling, labels=labels, annotations=annotations)
    folder = str(_annotations_folder(annotations))
    try:
        found = check_annotations(camera_spec(candidate), Path(settings.MEDIA_ROOT))
    except GemelError as exc:
        raise ValidationError(str(exc).replace(folder, "annotations")) from None
    return AnnotationVocabulary(found.names, found.source.replace(folder, "annotations"))


def _check_annotations_fit(camera: Camera, source: str) -> None:
    """Refuse a new source that the camera's uploaded annotations do not match (they are kept as they are)."""
    try:
        _checked_annotations(camera, source=source, labels=camera.labels, annotations=camera.annotations)
    except ValidationError as exc:
        raise ValidationError(
            f"the camera's annotations do not match the new source ({exc.messages[0]}); "
            "upload annotations for it after registering it as a new camera"
        ) from None


def _unpacked_yolo(data: bytes, folder: Path) -> None:
    """Unpack the label files (``*.txt``, ``data.yaml``) of a YOLO zip flat into ``folder``; other members
    (images, folders) are skipped."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValidationError({"file": "not a zip file: YOLO labels are uploaded as a zip of .txt files"}) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        wanted = []
        for member in members:
            path = PurePosixPath(member.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts:
                raise ValidationError({"file": f"zip member {member.filename!r} points outside the archive"})
            if path.suffix == ".txt" or path.name in YOLO_NAME_FILES:
                if path.parts[0] == "__MACOSX" or path.name.startswith("."):
                    continue
                wanted.append((member, path.name))
        if not wanted:
            raise ValidationError({"file": "the zip holds no YOLO label files (<frame>.txt)"})
        if len(wanted) > MAX_LABEL_FILES:
            raise ValidationError({"file": f"the zip holds {len(wanted)} label files; at most {MAX_LABEL_FILES}"})
        names = [name for _, name in wanted]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValidationError({"file": f"two label files share a name: {', '.join(repeated[:5])}"})
        folder.mkdir(parents=True)
        unpacked = 0
        for member, name in wanted:
            if member.file_size > MAX_LABEL_FILE_BYTES:
                raise ValidationError({"file": f"{member.filename}: over {MAX_LABEL_FILE_BYTES} bytes unpacked"})
            with archive.open(member) as source:
                content = source.read(MAX_LABEL_FILE_BYTES + 1)
            if len(content) > MAX_LABEL_FILE_BYTES:
                raise ValidationError({"file": f"{member.filename}: over {MAX_LABEL_FILE_BYTES} bytes unpacked"})
            unpacked += len(content)
            if unpacked > MAX_LABEL_BYTES:
                raise ValidationError({"file": f"the label files come to over {MAX_LABEL_BYTES >> 20} MiB unpacked"})
            (folder / name).write_bytes(content)


def camera_annotations_upload(*, camera: Camera, file: Any) -> Camera:
    """Label an image-folder or video-file camera with uploaded annotations: a zip of YOLO files (``<frame>.txt``,
    a video's frame N as ``frame_00000N.txt``, with a
    ``classes.txt`` or ``data.yaml`` naming the classes, else COCO's 80 classes) or a COCO json.

    The annotations are read against every frame of the source before anything is kept; the camera then labels
    its frames with them, its vocabulary is the annotations' class names, and its queries are measured again.

    Returns:
        The saved camera.

    Raises:
        ValidationError: the file is neither a zip nor a json, a zip member escapes the archive or is too large,
            the annotations do not match the frames (the file and line are named), or a query on the camera
            looks for a class the annotations do not name.
    """
    name = str(getattr(file, "name", ""))
    kind = "yolo" if name.lower().endswith(".zip") else "coco" if name.lower().endswith(".json") else None
    if kind is None:
        raise ValidationError({"file": "upload a .zip of YOLO label files or a COCO .json"})
    data = file.read()
    relative = Path(ANNOTATIONS_DIR) / f"camera-{camera.pk}-{uuid.uuid4().hex}"
    folder = Path(settings.MEDIA_ROOT) / relative
    stored = relative / "labels" if kind == "yolo" else relative / "coco.json"
    try:
        if kind == "yolo":
            _unpacked_yolo(data, folder / "labels")
        else:
            folder.mkdir(parents=True)
            (folder / "coco.json").write_bytes(data)  # the engine's reader says what is wrong with it
        try:
            vocabulary = _checked_annotations(camera, source=camera.source, labels=kind, annotations=str(stored))
        except ValidationError as exc:
            raise ValidationError({"file": exc.messages}) from None
        _check_queries_fit(camera, vocabulary, "file")
        _relabel(camera, labels=kind, annotations=str(stored), vocabulary=vocabulary)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return camera


def _check_queries_fit(camera: Camera, vocabulary: AnnotationVocabulary, field: str) -> None:
    """Refuse new labels whose classes a query on ``camera`` does not find (it is named)."""
    for query in camera.queries.all():
        try:
            Task.from_json(query.task, vocabulary=vocabulary.names)
        except GemelError as exc:
            raise ValidationError({field: f"query {query.name!r} would break: {exc}"}) from None


def _relabel(camera: Camera, *, labels: str, annotations: str = "", vocabulary: AnnotationVocabulary,
             teacher: ModelEntry | None = None, teacher_labels: list[str] | None = None,
             teacher_score_threshold: float = 0.5, teacher_frame_size: list[int] | None = None) -> None:
    """Give ``camera`` its new labels (annotations or a teacher, replacing the old ones, whose uploaded files go
    after commit) and measure its queries again."""
    with transaction.atomic():
        old = _annotations_folder(camera.annotations)
        camera.labels, camera.annotations = labels, annotations
        camera.vocabulary = list(vocabulary.names)
        camera.vocabulary_source = vocabulary.source
        camera.teacher, camera.teacher_labels = teacher, list(teacher_labels or [])
        camera.teacher_score_threshold, camera.teacher_frame_size = teacher_score_threshold, teacher_frame_size
        camera.test_start_frame = None
        camera.full_clean()
        camera.save()
        for query in camera.queries.all():
            query_remeasure(query)
        if old is not None and old != _annotations_folder(annotations):
            transaction.on_commit(lambda: shutil.rmtree(old, ignore_errors=True))


MAX_TEACHER_LABELS = 1000


def camera_teacher_set(
    *, camera: Camera, model: ModelEntry, labels: str | list[str], score_threshold: float = 0.5,
    frame_size: list[int] | None = None,
) -> Camera:
    """Label ``camera`` with a teacher: ``model``, a registered detector (typically larger than the queries'
    models), whose detections scoring at least ``score_threshold`` become the boxes every query on the camera
    is labelled from. ``labels`` names the class of each of its label ids from 1 on ("" for an id that names
    none), or is "coco" for torchvision's COCO detectors; ``frame_size`` is the [width, height] it sees (None:
    the camera's own size). The teacher is built and its weights loaded before anything is kept; the camera's
    uploaded annotations, if any, are replaced, and its queries are measured again.

    Returns:
        The saved camera.

    Raises:
        ValidationError: the model is not a detector or has no weights, the labels are malformed, too many or do
            not fit the weights, the threshold or frame size is out of range, or a query on the camera looks
            for a class the labels do not name.
    """
    if not model.weights:
        raise ValidationError({"model": f"model {model.name!r} has no weights to label with"})
    if labels == "coco":
        names: tuple[str, ...] = COCO_DETECTION_LABELS
    elif isinstance(labels, list) and all(isinstance(name, str) for name in labels):
        names = tuple(name.strip() for name in labels)
    else:
        raise ValidationError({"labels": "name the class of each label id (1, 2, ...) in order, or 'coco'"})
    if len(names) > MAX_TEACHER_LABELS:
        raise ValidationError({"labels": f"at most {MAX_TEACHER_LABELS} label ids, got {len(names)}"})
    declared = (model.builder_args or {}).get("num_classes")
    if declared is not None and declared != len(names) + 1:
        raise ValidationError({"labels": (
            f"model {model.name!r} has {declared} outputs (background and {declared - 1} label ids) but "
            f"{len(names)} class names were given")})
    if get_spec(model.arch).task != "detection":
        raise ValidationError({"model": f"model {model.name!r} is a {model.arch} classifier: a teacher must be a "
                                        "detector, whose boxes label every query on the camera"})
    if isinstance(score_threshold, bool) or not (
        isinstance(score_threshold, int | float) and 0 <= score_threshold <= 1
    ):
        raise ValidationError({"score_threshold": f"a score threshold is in [0, 1], got {score_threshold!r}"})
    if frame_size is not None and not (
        isinstance(frame_size, list) and len(frame_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and _MIN_SIDE <= v <= _MAX_SIDE for v in frame_size)
    ):
        raise ValidationError({"frame_size": f"a frame size is [width, height] in [{_MIN_SIDE}, {_MAX_SIDE}] pixels"})
    try:
        teacher = teacher_spec(model, labels=names, score_threshold=float(score_threshold), frame_size=frame_size)
    except TeacherError as exc:
        raise ValidationError({"labels": str(exc)}) from None
    try:
        teacher.build(Path(settings.MEDIA_ROOT))
    except GemelError as exc:
        raise ValidationError({"labels": (
            f"model {model.name!r}'s weights do not fit {len(names)} label ids: "
            f"{str(exc).replace(str(settings.MEDIA_ROOT), 'media')}")}) from None
    vocabulary = AnnotationVocabulary(teacher.vocabulary, f"teacher model {model.name}")
    _check_queries_fit(camera, vocabulary, "labels")
    _relabel(camera, labels=Camera.Labels.TEACHER, vocabulary=vocabulary, teacher=model, teacher_labels=list(names),
             teacher_score_threshold=score_threshold, teacher_frame_size=frame_size)
    return camera
