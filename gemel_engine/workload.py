"""Workloads: the cameras and queries of one edge box, stored as ``workload.json``.

Relative paths in the file (weights, annotations) are relative to the file's folder. Loading checks
every field and that every referenced weights file exists, naming the query and the path otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from gemel_engine import zoo
from gemel_engine.accuracy import (
    Measurement,
    chance_accuracy,
    chance_measurement,
    chance_shortfall,
    lead_over_chance,
    measure_sets,
)
from gemel_engine.data.annotations import read_coco_annotations, read_yolo_labels
from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.frames import Box
from gemel_engine.data.sampling import FrameCache, FrameSet, SamplingSpec, split_by_time
from gemel_engine.data.sources import open_source
from gemel_engine.errors import GemelError
from gemel_engine.fileio import read_versioned_json
from gemel_engine.queries import AccuracyTarget, Query, QueryError, Target, Task, predict, teacher_targets
from gemel_engine.train import LabelledFrames

WORKLOAD_FORMAT = "gemel-workload"
WORKLOAD_VERSION = 2
# Version 1 files split frames into train and validation only and measured the unmerged models on validation
# frames; they have no held-out test figures, so they are refused with how to rebuild them.
_VERSION_1_HELP = (
    "it predates held-out test frames (version 1 measured accuracy on validation frames only); rebuild it "
    "(`python -m gemel_engine demo build --scale NAME --out DIR` for a demo) or re-measure its queries with "
    "`python -m gemel_engine measure --workload FILE`"
)
LabelKind = Literal["ground_truth", "yolo", "coco", "teacher"]
LABEL_KINDS: tuple[LabelKind, ...] = ("ground_truth", "yolo", "coco", "teacher")


class WorkloadError(GemelError):
    """A workload file that is malformed or references something missing."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera of a workload and how its frames are sampled, split and labelled."""

    # Unique camera name.
    name: str
    # Source URI (``synthetic://...``, a file or folder path, ``rtsp://...``).
    source: str
    # Which frames to take and at what size.
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    # Fraction of frames, before the test frames, kept for validation (the search's decisions).
    val_fraction: float = 0.2
    # Latest fraction of frames held out for testing (reports and the deploy gate only).
    test_fraction: float = 0.2
    # Seconds dropped between train and validation, and between validation and test (no leakage between
    # neighbouring frames).
    gap_seconds: float = 2.0
    # Where labels come from: the source's ground truth, YOLO or COCO annotations, or the query's model.
    labels: LabelKind = "ground_truth"
    # Annotation folder (YOLO) or file (COCO), relative to the workload file.
    annotations: str | None = None
    # Frame rate for sources that do not carry one (image folders).
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.labels not in LABEL_KINDS:
            raise WorkloadError(f"camera {self.name!r}: labels must be one of {', '.join(LABEL_KINDS)}")
        if self.labels in ("yolo", "coco") and not self.annotations:
            raise WorkloadError(f"camera {self.name!r}: {self.labels} labels need an 'annotations' path")
        if (
            not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise WorkloadError(
                f"camera {self.name!r}: val_fraction and test_fraction must be in (0, 1) and leave frames to train on"
            )
        if not math.isfinite(self.gap_seconds) or self.gap_seconds < 0:
            raise WorkloadError(f"camera {self.name!r}: gap_seconds must be >= 0")

    def to_json(self) -> dict[str, Any]:
        """Return the camera as JSON-ready data."""
        return {
            "name": self.name, "source": self.source, "sampling": self.sampling.to_json(),
            "val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "gap_seconds": self.gap_seconds,
            "labels": self.labels,
            "annotations": self.annotations, "fps": self.fps,
        }


@dataclass(frozen=True)
class QueryEntry:
    """A query of a workload with its unmerged model's weights and measured accuracy."""

    query: Query
    # Keyword arguments of the zoo builder beyond num_classes (e.g. a detector's min_size).
    builder_args: dict[str, Any] = field(default_factory=dict)
    # Weights file of the unmerged model, relative to the workload file.
    weights: str | None = None
    # Accuracy of the unmerged model on its validation frames (top-1 or mAP@0.5): the search's reference.
    unmerged_accuracy: float | None = None
    # Accuracy of always answering the most frequent class on the validation frames (classification).
    chance_accuracy: float | None = None
    # The unmerged model on its held-out test frames, with its 95% interval: the reference of reports and
    # of the deploy gate.
    unmerged_test: Measurement | None = None
    # The unmerged model's 95% interval on the validation frames.
    unmerged_val_interval: tuple[float, float] | None = None
    # Always answering the commonest class of the training frames, on the held-out test frames with its 95%
    # interval (classification; None for detection or before measuring).
    chance_test: Measurement | None = None
    # The unmerged model's lead over that baseline on the same test frames, with its paired 95% interval.
    chance_lead: Measurement | None = None

    @property
    def name(self) -> str:
        """Return the query's name."""
        return self.query.name

    @property
    def required_accuracy(self) -> float | None:
        """Return the accuracy a merged model must keep on validation frames, or None before the unmerged
        model is measured."""
        if self.unmerged_accuracy is None:
            return None
        return self.query.target.required(self.unmerged_accuracy)

    @property
    def chance_shortfall(self) -> str | None:
        """Return why the unmerged model is not clearly better, on held-out test frames, than a model that learned
        nothing (``accuracy.chance_shortfall``), or None when it is or before both are measured on test frames.
        Merging such a query proves nothing: its targets are relative to a useless model."""
        return chance_shortfall(self.unmerged_test, self.chance_test, self.chance_lead,
                                detection=self.query.task.is_detection)

    @property
    def required_test_accuracy(self) -> float | None:
        """Return the accuracy a merged model must keep on test frames (the target applied to the unmerged
        model's test accuracy), or None before that is measured."""
        if self.unmerged_test is None:
            return None
        return self.query.target.required(self.unmerged_test.accuracy)

    def build_model(self) -> nn.Module:
        """Return an untrained model of the query's architecture, task head and builder arguments."""
        return self.query.build_model(**self.builder_args)

    def recipe_args(self) -> dict[str, Any]:
        """Return the full zoo builder arguments (``num_classes`` included) that rebuild the model."""
        return {"num_classes": self.query.task.num_outputs, **self.builder_args}

    def to_json(self) -> dict[str, Any]:
        """Return the query as JSON-ready data."""
        return {
            "name": self.query.name, "camera": self.query.camera, "arch": self.query.arch,
            "builder_args": self.builder_args, "task": self.query.task.to_json(),
            "target": self.query.target.to_json(), "weights": self.weights,
            "unmerged_accuracy": self.unmerged_accuracy, "chance_accuracy": self.chance_accuracy,
            "unmerged_val_interval": list(self.unmerged_val_interval) if self.unmerged_val_interval else None,
            "unmerged_test": self.unmerged_test.to_json() if self.unmerged_test else None,
            "chance_test": self.chance_test.to_json() if self.chance_test else None,
            "chance_lead": self.chance_lead.to_json() if self.chance_lead else None,
        }


@dataclass(frozen=True)
class Workload:
    """The cameras and queries of one edge box."""

    name: str
    cameras: tuple[CameraSpec, ...]
    queries: tuple[QueryEntry, ...]
    # Folder that relative paths are resolved against (the workload file's folder).
    root: Path = Path(".")

    def __post_init__(self) -> None:
        camera_names = [camera.name for camera in self.cameras]
        query_names = [entry.name for entry in self.queries]
        for kind, names in (("camera", camera_names), ("query", query_names)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise WorkloadError(f"{kind} names must be unique; repeated: {', '.join(repeated)}")
        for entry in self.queries:
            if entry.query.camera not in camera_names:
                raise WorkloadError(f"query {entry.name!r} watches unknown camera {entry.query.camera!r}")

    def camera(self, name: str) -> CameraSpec:
        """Return the camera called ``name``.

        Raises:
            WorkloadError: there is none.
        """
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise WorkloadError(f"workload has no camera {name!r}")

    def query(self, name: str) -> QueryEntry:
        """Return the query called ``name``.

        Raises:
            WorkloadError: there is none.
        """
        for entry in self.queries:
            if entry.name == name:
                return entry
        raise WorkloadError(f"workload has no query {name!r}")

    def weights_path(self, entry: QueryEntry) -> Path:
        """Return the absolute path of a query's weights file.

        Raises:
            WorkloadError: the query has no weights file, or it does not exist.
        """
        if entry.weights is None:
            raise WorkloadError(f"query {entry.name!r} has no weights file")
        path = (self.root / entry.weights).resolve()
        if not path.is_file():
            raise WorkloadError(f"query {entry.name!r}: weights file {path} not found")
        return path

    def load_model(self, entry: QueryEntry) -> nn.Module:
        """Return the query's unmerged model with its weights loaded (eval mode).

        Raises:
            WorkloadError: the weights file is missing.
            WeightsError: the weights do not fit the architecture or cannot be read safely.
        """
        return zoo.load_weights(entry.build_model(), self.weights_path(entry)).eval()

    def with_queries(self, queries: tuple[QueryEntry, ...]) -> Workload:
        """Return this workload with its queries replaced."""
        return Workload(self.name, self.cameras, queries, self.root)

    def to_json(self) -> dict[str, Any]:
        """Return the workload as JSON-ready data."""
        return {
            "format": WORKLOAD_FORMAT,
            "version": WORKLOAD_VERSION,
            "name": self.name,
            "cameras": [camera.to_json() for camera in self.cameras],
            "queries": [entry.to_json() for entry in self.queries],
        }

    def save(self, path: str | Path) -> Path:
        """Write the workload as JSON at ``path`` and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, *, check_weights: bool = True, upgrade: bool = False) -> Workload:
        """Return the workload stored at ``path``.

        A version 1 file (no held-out test split) is refused unless ``upgrade``: then it is read with the
        default test split and without its old accuracies, ready to be measured again (``measure``).

        Raises:
            WorkloadError: the file is missing or malformed, names unknown cameras or architectures, or
                (with ``check_weights``) references a weights file that does not exist.
        """
        path = Path(path)
        data = read_versioned_json(path, version=(1, WORKLOAD_VERSION), what="workload", error=WorkloadError)
        if data.get("format") != WORKLOAD_FORMAT:
            raise WorkloadError(f"{path}: not a {WORKLOAD_FORMAT} file")
        if data.get("version") == 1 and upgrade and isinstance(data.get("queries"), list):
            data = {**data, "version": WORKLOAD_VERSION, "queries": [
                {k: v for k, v in q.items() if k not in ("unmerged_accuracy", "chance_accuracy")}
                if isinstance(q, dict) else q for q in data["queries"]
            ]}
        if data.get("version") == 1:
            raise WorkloadError(f"{path}: workload version 1 cannot be used: {_VERSION_1_HELP}")
        try:
            workload = cls(
                name=str(data.get("name", path.parent.name)),
                cameras=tuple(_camera_from_json(c) for c in data["cameras"]),
                queries=tuple(query_from_json(q) for q in data["queries"]),
                root=path.parent.resolve(),
            )
        except (KeyError, TypeError, ValueError, GemelError) as exc:
            message = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else exc
            raise WorkloadError(f"{path}: invalid workload: {message}") from None
        if check_weights:
            for entry in workload.queries:
                workload.weights_path(entry)
        return workload


def _camera_from_json(data: dict[str, Any]) -> CameraSpec:
    sampling = data.get("sampling") or {}
    size = sampling.get("size")
    return CameraSpec(
        name=data["name"],
        source=data["source"],
        sampling=SamplingSpec(
            every=sampling.get("every"), count=sampling.get("count"),
            size=tuple(size) if size else None, max_frames=sampling.get("max_frames"),
        ),
        val_fraction=float(data.get("val_fraction", 0.2)),
        test_fraction=float(data.get("test_fraction", 0.2)),
        gap_seconds=float(data.get("gap_seconds", 2.0)),
        labels=data.get("labels", "ground_truth"),
        annotations=data.get("annotations"),
        fps=data.get("fps"),
    )


def query_from_json(data: dict[str, Any]) -> QueryEntry:
    """Return the query entry that ``QueryEntry.to_json`` wrote.

    Raises:
        KeyError, TypeError, ValueError: a missing or malformed field.
        GemelError: a task, target or name the engine refuses.
    """
    query = Query(
        name=data["name"], camera=data["camera"], arch=data["arch"],
        task=Task.from_json(data["task"]), target=AccuracyTarget.from_json(data.get("target", {"relative": 0.95})),
    )
    builder_args = data.get("builder_args") or {}
    if not isinstance(builder_args, dict):
        raise QueryError(f"query {query.name!r}: builder_args must be an object")
    test = data.get("unmerged_test")
    chance_test, chance_lead = data.get("chance_test"), data.get("chance_lead")
    val_interval = data.get("unmerged_val_interval")
    return QueryEntry(
        query=query, builder_args=builder_args, weights=data.get("weights"),
        unmerged_accuracy=data.get("unmerged_accuracy"), chance_accuracy=data.get("chance_accuracy"),
        unmerged_test=Measurement.from_json(test) if test is not None else None,
        unmerged_val_interval=(float(val_interval[0]), float(val_interval[1])) if val_interval else None,
        chance_test=Measurement.from_json(chance_test) if chance_test is not None else None,
        chance_lead=Measurement.from_json(chance_lead) if chance_lead is not None else None,
    )


@dataclass(frozen=True, eq=False)
class CameraFrames:
    """A camera's sampled frames, split by time: train (fitting), val (the search's decisions), test (held out:
    reports and the deploy gate only)."""

    train: FrameSet
    val: FrameSet
    test: FrameSet


@dataclass(frozen=True, eq=False)
class QueryFrames:
    """A query's labelled frames: train, val and test (see ``CameraFrames``)."""

    train: LabelledFrames
    val: LabelledFrames
    test: LabelledFrames


def camera_frames(workload: Workload, camera: CameraSpec, *, cache_dir: Path | None = None) -> CameraFrames:
    """Return the camera's sampled frames split into train, validation and test, through the frame cache.

    Annotations (YOLO/COCO) replace the source's own boxes when the camera says so.

    Raises:
        SourceError: the source cannot be opened or decoded, or the annotations do not match the frames.
    """
    cache = FrameCache(cache_dir or workload.root / "cache")
    with open_source(camera.source, fps=camera.fps) as source:
        frames = cache.get(source, camera.sampling)
        if camera.labels in ("yolo", "coco"):
            frames = _with_annotations(workload, camera, source, frames)
    return CameraFrames(*split_by_time(
        frames, val_fraction=camera.val_fraction, test_fraction=camera.test_fraction, gap=camera.gap_seconds
    ))


def _with_annotations(workload: Workload, camera: CameraSpec, source: object, frames: FrameSet) -> FrameSet:
    if not isinstance(source, ImageFolderSource):
        raise WorkloadError(f"camera {camera.name!r}: annotations need an image-folder source")
    files = [source.files[int(i)] for i in frames.indices]
    original_sizes = [source.resolution] * len(files)
    path = workload.root / str(camera.annotations)
    class_names = _vocabulary(workload, camera)
    names = [file.name for file in files]
    if camera.labels == "yolo":
        boxes = read_yolo_labels(path, names, original_sizes, class_names)
    else:
        boxes = read_coco_annotations(path, names, original_sizes, class_names)
    width, height = frames.resolution
    scale_x, scale_y = width / source.resolution[0], height / source.resolution[1]
    scaled = tuple(tuple(box.scaled(scale_x, scale_y) for box in frame_boxes) for frame_boxes in boxes)
    return FrameSet(frames.images, frames.timestamps, frames.indices, scaled)


def _vocabulary(workload: Workload, camera: CameraSpec) -> tuple[str, ...]:
    vocabularies = {entry.query.task.vocabulary for entry in workload.queries if entry.query.camera == camera.name}
    return next(iter(vocabularies)) if len(vocabularies) == 1 else tuple(sorted({c for v in vocabularies for c in v}))


def _targets(boxes: tuple[tuple[Box, ...] | None, ...], task: Task, camera: CameraSpec) -> list[Target]:
    missing = sum(1 for frame_boxes in boxes if frame_boxes is None)
    if missing:
        raise WorkloadError(
            f"camera {camera.name!r}: {missing} frame(s) have no ground truth; use annotations or teacher labels"
        )
    return [task.target(frame_boxes or ()) for frame_boxes in boxes]


def query_data(
    workload: Workload,
    entry: QueryEntry,
    frames: CameraFrames,
    *,
    teacher: Callable[[], nn.Module] | None = None,
) -> QueryFrames:
    """Return the query's labelled train, validation and test frames.

    Ground-truth and annotated cameras label frames from their boxes. Teacher-labelled cameras label
    them with the query's unmerged model (``teacher`` builds it; by default the workload's weights).

    Raises:
        WorkloadError: a camera without ground truth is not labelled by annotations or a teacher.
        QueryError: boxes carry class names outside the task's vocabulary.
    """
    camera = workload.camera(entry.query.camera)
    task = entry.query.task
    parts = (frames.train, frames.val, frames.test)
    if camera.labels == "teacher":
        model = (teacher or (lambda: workload.load_model(entry)))()
        labels = [teacher_targets(predict(model, part.images, task), task) for part in parts]
    else:
        labels = [_targets(part.boxes, task, camera) for part in parts]
    return QueryFrames(*(LabelledFrames(part.images, targets) for part, targets in zip(parts, labels, strict=True)))


def measure_unmerged(entry: QueryEntry, model: nn.Module, frames: QueryFrames) -> QueryEntry:
    """Measure a query's unmerged ``model`` the one way every model is measured (``gemel_engine.accuracy.measure``)
    on its validation and test frames, and the commonest-class baseline on validation frames and (the commonest
    class of the training frames) on test frames.

    Returns:
        ``entry`` with ``unmerged_accuracy``, ``unmerged_val_interval``, ``unmerged_test``, ``chance_accuracy``,
        ``chance_test`` and ``chance_lead`` set (rounded to four decimals). The model keeps the re-estimated
        BatchNorm statistics.

    Raises:
        QueryError: a frame set is empty.
    """
    task = entry.query.task
    val, test = measure_sets(model, (frames.val, frames.test), task, calibration=frames.train)
    train_targets = list(frames.train.targets)
    lead = None
    if not task.is_detection:  # the model keeps the statistics it was just measured with
        lead = lead_over_chance(predict(model, frames.test.images, task), frames.test, train_targets, task)
    return dataclasses.replace(
        entry,
        unmerged_accuracy=round(val.accuracy, 4),
        unmerged_val_interval=(round(val.low, 4), round(val.high, 4)),
        unmerged_test=Measurement.from_json(test.to_json()),
        chance_accuracy=chance_accuracy(list(frames.val.targets)),
        chance_test=_rounded(chance_measurement(train_targets, frames.test, task)),
        chance_lead=_rounded(lead),
    )


def _rounded(measured: Measurement | None) -> Measurement | None:
    return None if measured is None else Measurement.from_json(measured.to_json())


def measure_query(workload: Workload, entry: QueryEntry, frames: CameraFrames) -> tuple[QueryEntry, int, int]:
    """Measure a query's unmerged model, loaded from the workload's weights, on its camera's frames (labelled as
    ``query_data`` labels them; see ``measure_unmerged``).

    Returns:
        The measured entry, how many validation frames it was measured on, and the source index of the camera's
        first held-out test frame (where serving on test frames starts).

    Raises:
        GemelError: the weights cannot be loaded or the frames cannot be labelled.
        QueryError: a frame set is empty.
    """
    labelled = query_data(workload, entry, frames)
    measured = measure_unmerged(entry, workload.load_model(entry), labelled)
    return measured, len(labelled.val), int(frames.test.indices.min())
