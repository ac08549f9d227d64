"""Translate dashboard rows into the engine's values (CameraSpec, QueryEntry, Workload) and back.

Only pure translation lives here: no writes, no validation beyond what the engine's constructors check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from gemel_engine.accuracy import Measurement, chance_shortfall
from gemel_engine.data.sampling import SamplingSpec
from gemel_engine.data.sources import synthetic_config
from gemel_engine.data.synthetic import CLASSES
from gemel_engine.errors import GemelError
from gemel_engine.queries import AccuracyTarget, Task
from gemel_engine.queries import Query as EngineQuery
from gemel_engine.teacher import TeacherSpec
from gemel_engine.workload import CameraSpec, QueryEntry, Workload
from webapp.workloads.models import Camera, ModelEntry, Query

# Frames read from a source when its camera states no bound: keeps endless streams finite.
DEFAULT_MAX_FRAMES = 1500
# CameraSpec options a camera may carry in its ``sampling`` field, beyond the frame size.
SAMPLING_KEYS = ("every", "count", "max_frames", "val_fraction", "test_fraction", "gap_seconds")


def camera_has_ground_truth(source: str) -> bool:
    """Return whether frames of ``source`` carry ground-truth boxes (the synthetic scenes do)."""
    return source.startswith("synthetic://")


def camera_labels(camera: Camera) -> str:
    """Return the engine's label kind of ``camera``: its uploaded annotations' kind (yolo, coco) or its teacher
    detector's (teacher), else the ground truth of a synthetic source, else each query's own model (teacher)."""
    if camera.labels:
        return camera.labels
    return "ground_truth" if camera_has_ground_truth(camera.source) else "teacher"


def camera_label_source(camera: Camera) -> str:
    """Return, in words, where the labels of a query on ``camera`` come from."""
    if camera.teacher_id is not None:
        return f"teacher model {camera.teacher.name}'s boxes scoring {camera.teacher_score_threshold:g} or more"
    if camera.labels:
        return f"{camera.get_labels_display()} ({camera.vocabulary_source or 'uploaded'})"
    if camera_has_ground_truth(camera.source):
        return "the synthetic scene's ground truth"
    return "the query's own unmerged model (agreement with it, not ground truth)"


def camera_classes(camera: Camera) -> tuple[str, ...]:
    """Return the class names a query on ``camera`` may look for: its annotations' vocabulary, else the synthetic
    scenes' classes."""
    return tuple(camera.vocabulary) if camera.vocabulary else CLASSES


def stored_task(task: Task) -> dict[str, Any]:
    """Return the task JSON a query row stores: without its vocabulary, which the camera holds."""
    return {key: value for key, value in task.to_json().items() if key != "vocabulary"}


def annotations_path(camera: Camera) -> str | None:
    """Return the absolute path of the camera's uploaded annotations, or None without any."""
    return str(Path(settings.MEDIA_ROOT) / camera.annotations) if camera.annotations else None


def _may_be_endless(source: str) -> bool:
    if not camera_has_ground_truth(source):
        return True  # streams are endless; long files are bounded the same way
    try:
        return synthetic_config(source)[1].num_frames is None
    except GemelError:
        return True


def camera_spec(camera: Camera) -> CameraSpec:
    """Return the engine's CameraSpec of ``camera``: its frame size, sampling and label source.

    Raises:
        SourceError / WorkloadError: the stored sampling options are malformed.
    """
    options: dict[str, Any] = dict(camera.sampling or {})
    every, count = options.get("every"), options.get("count")
    max_frames = options.get("max_frames")
    if max_frames is None and count is None and _may_be_endless(camera.source):
        max_frames = DEFAULT_MAX_FRAMES
    # Whatever the camera says, one measurement or merge reads at most CAMERA_MAX_FRAMES frames.
    limit = settings.CAMERA_MAX_FRAMES
    if max_frames is None:
        max_frames = limit
    elif isinstance(max_frames, int) and not isinstance(max_frames, bool):
        max_frames = min(max_frames, limit)  # anything else SamplingSpec refuses with the reason
    sampling = SamplingSpec(every=every, count=count, size=(camera.width, camera.height), max_frames=max_frames)
    return CameraSpec(
        name=camera.name,
        source=camera.source,
        sampling=sampling,
        val_fraction=float(options.get("val_fraction", 0.2)),
        test_fraction=float(options.get("test_fraction", 0.2)),
        gap_seconds=float(options.get("gap_seconds", 2.0)),
        labels=camera_labels(camera),  # type: ignore[arg-type]
        annotations=annotations_path(camera),
        fps=camera.fps,
        teacher=camera_teacher(camera),
    )


def camera_teacher(camera: Camera) -> TeacherSpec | None:
    """Return the engine's TeacherSpec of the camera's teacher detector, or None when it names none.

    Raises:
        TeacherError: the stored teacher is not one the engine accepts.
    """
    if camera.teacher_id is None:
        return None
    return teacher_spec(camera.teacher, labels=tuple(camera.teacher_labels),
                        score_threshold=camera.teacher_score_threshold, frame_size=camera.teacher_frame_size)


def teacher_spec(model: ModelEntry, *, labels: tuple[str, ...], score_threshold: float,
                 frame_size: list[int] | None) -> TeacherSpec:
    """Return the engine's TeacherSpec of ``model`` labelling with ``labels`` (the class of each label id).

    Raises:
        TeacherError: the engine refuses it (not a detector, labels that name nothing, a threshold out of range).
    """
    return TeacherSpec(
        arch=model.arch, weights=str(weights_file(model)), labels=labels, builder_args=head_args(model),
        score_threshold=score_threshold, frame_size=(int(frame_size[0]), int(frame_size[1])) if frame_size else None,
    )


def camera_labelled_by_own_model(camera: Camera) -> bool:
    """Return whether each query on ``camera`` is labelled by its own unmerged model (nothing else labels it)."""
    return camera_labels(camera) == "teacher" and camera.teacher_id is None


def head_args(model: ModelEntry) -> dict[str, Any]:
    """Return the model's builder arguments without ``num_classes`` (the query's task decides the head)."""
    return {key: value for key, value in (model.builder_args or {}).items() if key != "num_classes"}


def engine_query(query: Query) -> EngineQuery:
    """Return the engine's Query of ``query``.

    Raises:
        QueryError: the task, target or name does not satisfy the engine.
    """
    return EngineQuery(
        name=query.name,
        camera=query.camera.name,
        arch=query.model.arch,
        task=Task.from_json(query.task, vocabulary=camera_classes(query.camera)),
        target=AccuracyTarget(relative=query.target_fraction),
    )


def query_unmerged_test(query: Query) -> Measurement | None:
    """Return the query's unmerged model measured on held-out test frames, or None before that is measured."""
    return Measurement.from_json(query.unmerged_test) if query.unmerged_test else None


def query_chance_test(query: Query) -> Measurement | None:
    """Return the commonest-class baseline on the query's held-out test frames, or None (detection, or before
    that is measured)."""
    return Measurement.from_json(query.chance_test) if query.chance_test else None


def query_chance_lead(query: Query) -> Measurement | None:
    """Return the unmerged model's lead over that baseline, with its paired interval, or None (detection, or
    before that is measured)."""
    return Measurement.from_json(query.chance_lead) if query.chance_lead else None


def query_chance_shortfall(query: Query) -> str | None:
    """Return why the query's unmerged model is not clearly better than one that learned nothing, on held-out test
    frames (the engine's verdict), or None when it is or before it is measured."""
    return chance_shortfall(query_unmerged_test(query), query_chance_test(query), query_chance_lead(query),
                            detection=query.task.get("kind") == "detection")


def query_required_accuracy(query: Query) -> float | None:
    """Return the accuracy a merged model of ``query`` must reach now on validation frames (its current target
    over its current unmerged accuracy), or None before the query is measured."""
    if query.unmerged_accuracy is None:
        return None
    return AccuracyTarget(relative=query.target_fraction).required(query.unmerged_accuracy)


def query_required_test_accuracy(query: Query) -> float | None:
    """Return the accuracy a merged model of ``query`` must reach now on held-out test frames (its current target
    over its unmerged model's test accuracy), or None before that is measured."""
    test = query_unmerged_test(query)
    return None if test is None else AccuracyTarget(relative=query.target_fraction).required(test.accuracy)


def query_entry(query: Query, *, weights: str | None) -> QueryEntry:
    """Return the engine's QueryEntry of ``query`` with ``weights`` (absolute, or relative to the workload)."""
    return QueryEntry(
        query=engine_query(query),
        builder_args=head_args(query.model),
        weights=weights,
        unmerged_accuracy=query.unmerged_accuracy,
        chance_accuracy=query.chance_accuracy,
        unmerged_test=query_unmerged_test(query),
        chance_test=query_chance_test(query),
        chance_lead=query_chance_lead(query),
    )


def weights_file(model: ModelEntry) -> Path:
    """Return the absolute path of the model's stored weights file."""
    return Path(settings.MEDIA_ROOT) / model.weights.name


def live_workload(queries: list[Query], *, name: str = "dashboard") -> Workload:
    """Return an in-memory workload of ``queries`` whose weights point at the stored files (for measuring)."""
    cameras = {query.camera_id: query.camera for query in queries}
    return Workload(
        name=name,
        cameras=tuple(camera_spec(camera) for camera in cameras.values()),
        queries=tuple(query_entry(query, weights=str(weights_file(query.model))) for query in queries),
        root=Path(settings.MEDIA_ROOT),
    )
