"""Workloads: the cameras and queries of one edge box, stored as ``workload.json``.

Relative paths in the file (weights, annotations) are relative to the file's folder. Loading checks
every field and that every referenced weights file exists, naming the query and the path otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
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
from gemel_engine.data.annotations import (
    COCO_CLASSES,
    VIDEO_FRAME_PREFIX,
    AnnotationVocabulary,
    annotation_vocabulary,
    read_coco_annotations,
    read_yolo_labels,
)
from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.frames import Box, CameraSource, check_vocabulary
from gemel_engine.data.sampling import FrameCache, FrameSet, SamplingSpec, split_by_time
from gemel_engine.data.sources import open_source
from gemel_engine.data.synthetic import CLASSES
from gemel_engine.data.video import VideoFileSource
from gemel_engine.errors import GemelError, SourceError
from gemel_engine.fileio import read_versioned_json
from gemel_engine.queries import AccuracyTarget, Query, QueryError, Target, Task, predict, teacher_targets
from gemel_engine.teacher import TeacherSpec, detect, labels_key, load_labels, save_labels
from gemel_engine.train import LabelledFrames, Progress, TrainArgs, TrainResult, fit, save_checkpoint, setup

WORKLOAD_FORMAT = "gemel-workload"
WORKLOAD_VERSION = 2
# Version 1 files split frames into train and validation only and measured the unmerged models on validation
# frames; they have no held-out test figures, so they are refused with how to rebuild them.
_VERSION_1_HELP = (
    "it predates held-out test frames (version 1 measured accuracy on validation frames only); rebuild it "
    "(`python -m gemel_engine demo build --scale NAME --out DIR` for a demo) or re-measure its queries with "
    "`python -m gemel_engine measure --workload FILE`"
)
# Fewest training frames a model is trained from scratch on.
MIN_TRAIN_FRAMES = 8
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
    # Where labels come from: the source's ground truth, YOLO or COCO annotations, or a teacher: the named
    # ``teacher`` detector, else each query's own unmerged model (fidelity to it).
    labels: LabelKind = "ground_truth"
    # Annotation folder (YOLO) or file (COCO), relative to the workload file.
    annotations: str | None = None
    # Frame rate for sources that do not carry one (image folders).
    fps: float | None = None
    # Class names the camera's labels use, declared ("coco" in the file: COCO_CLASSES). Annotations that name
    # their own classes need none (see ``camera_vocabulary``).
    vocabulary: tuple[str, ...] | None = None
    # The detector whose detections label every query on the camera (``labels: "teacher"`` only).
    teacher: TeacherSpec | None = None

    def __post_init__(self) -> None:
        if self.labels not in LABEL_KINDS:
            raise WorkloadError(f"camera {self.name!r}: labels must be one of {', '.join(LABEL_KINDS)}")
        if self.teacher is not None and self.labels != "teacher":
            raise WorkloadError(f"camera {self.name!r}: a teacher labels only a camera whose labels are 'teacher'")
        if self.vocabulary is not None:
            where = f"camera {self.name!r}: vocabulary"
            object.__setattr__(self, "vocabulary", check_vocabulary(self.vocabulary, where, error=WorkloadError))
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

    @property
    def labelled_by_own_model(self) -> bool:
        """Return whether each query on the camera is labelled by its own unmerged model (no teacher named)."""
        return self.labels == "teacher" and self.teacher is None

    def to_json(self) -> dict[str, Any]:
        """Return the camera as JSON-ready data."""
        return {
            "name": self.name, "source": self.source, "sampling": self.sampling.to_json(),
            "val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "gap_seconds": self.gap_seconds,
            "labels": self.labels,
            "annotations": self.annotations, "fps": self.fps,
            **({} if self.vocabulary is None else {
                "vocabulary": "coco" if self.vocabulary == COCO_CLASSES else list(self.vocabulary)
            }),
            **({} if self.teacher is None else {"teacher": self.teacher.to_json()}),
        }


def camera_vocabulary(camera: CameraSpec, root: Path) -> AnnotationVocabulary:
    """Return the class names a camera's labels use and where they come from.

    Annotations that name their classes (YOLO ``classes.txt``/``data.yaml``, COCO categories) decide, and must
    agree with a declared ``vocabulary``; YOLO labels that name none use the declared vocabulary, else COCO's 80
    classes. A camera labelled by a teacher detector uses the classes its label ids name. Other cameras use the
    declared vocabulary, else the synthetic scenes' classes (``CLASSES``).

    Raises:
        WorkloadError: the annotations are missing or malformed, or disagree with the declared vocabulary.
    """
    declared = None if camera.vocabulary is None else AnnotationVocabulary(camera.vocabulary, "the camera's vocabulary")
    if camera.teacher is not None:
        teacher = camera.teacher
        return AnnotationVocabulary(teacher.vocabulary, f"teacher {teacher.arch} ({teacher.weights})")
    if camera.labels not in ("yolo", "coco"):
        return declared or AnnotationVocabulary(CLASSES, "the synthetic scenes' classes")
    try:
        named = annotation_vocabulary(root / str(camera.annotations), camera.labels)
    except GemelError as exc:
        raise WorkloadError(f"camera {camera.name!r}: {exc}") from None
    if named is None:
        return declared or AnnotationVocabulary(COCO_CLASSES, "COCO's 80 classes (the labels name no classes)")
    if declared is not None:
        if camera.labels == "coco" and set(named.names) <= set(declared.names):
            return declared
        if named.names != declared.names:
            raise WorkloadError(
                f"camera {camera.name!r}: its vocabulary ({', '.join(declared.names[:5])}...) disagrees with the "
                f"classes {named.source} names ({', '.join(named.names[:5])}...); drop one of them"
            )
    return named


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
        vocabularies = {camera.name: camera_vocabulary(camera, self.root) for camera in self.cameras}
        object.__setattr__(self, "queries", tuple(
            _with_vocabulary(entry, vocabularies[entry.query.camera]) for entry in self.queries
        ))

    def vocabulary(self, camera: str) -> AnnotationVocabulary:
        """Return the class names the labels of the camera called ``camera`` use, and where they come from.

        Raises:
            WorkloadError: there is no such camera, or its annotations cannot be read.
        """
        return camera_vocabulary(self.camera(camera), self.root)

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
            root = path.parent.resolve()
            cameras = tuple(_camera_from_json(c) for c in data["cameras"])
            vocabularies = {camera.name: camera_vocabulary(camera, root).names for camera in cameras}
            workload = cls(
                name=str(data.get("name", path.parent.name)),
                cameras=cameras,
                queries=tuple(
                    query_from_json(q, vocabulary=vocabularies.get(q.get("camera"), CLASSES)) for q in data["queries"]
                ),
                root=root,
            )
        except (KeyError, TypeError, ValueError, GemelError) as exc:
            message = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else exc
            raise WorkloadError(f"{path}: invalid workload: {message}") from None
        if check_weights:
            for entry in workload.queries:
                workload.weights_path(entry)
        return workload


def _with_vocabulary(entry: QueryEntry, vocabulary: AnnotationVocabulary) -> QueryEntry:
    task = entry.query.task
    if task.vocabulary == vocabulary.names:
        return entry
    try:
        task = dataclasses.replace(task, vocabulary=vocabulary.names)
    except QueryError as exc:
        raise WorkloadError(
            f"query {entry.name!r}: {exc} (camera {entry.query.camera!r} labels with {vocabulary.source})"
        ) from None
    return dataclasses.replace(entry, query=dataclasses.replace(entry.query, task=task))


def _vocabulary_from_json(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value == "coco":
        return COCO_CLASSES
    if not isinstance(value, list):
        raise WorkloadError(f"a camera's vocabulary must be \"coco\" or a list of class names, got {value!r:.60}")
    return tuple(value)


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
        vocabulary=_vocabulary_from_json(data.get("vocabulary")),
        teacher=None if data.get("teacher") is None else TeacherSpec.from_json(data["teacher"]),
    )


def query_from_json(data: dict[str, Any], *, vocabulary: tuple[str, ...] = CLASSES) -> QueryEntry:
    """Return the query entry that ``QueryEntry.to_json`` wrote; ``vocabulary`` is its task's class vocabulary
    when the task names none (its camera's, see ``camera_vocabulary``).

    Raises:
        KeyError, TypeError, ValueError: a missing or malformed field.
        GemelError: a task, target or name the engine refuses.
    """
    query = Query(
        name=data["name"], camera=data["camera"], arch=data["arch"],
        task=Task.from_json(data["task"], vocabulary=vocabulary),
        target=AccuracyTarget.from_json(data.get("target", {"relative": 0.95})),
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

    Annotations (YOLO/COCO), or a teacher's detections, replace the source's own boxes when the camera says so.

    Raises:
        SourceError: the source cannot be opened or decoded, or the annotations do not match the frames.
        TeacherError / WeightsError: the camera's teacher cannot be built or its weights read.
    """
    cache = FrameCache(cache_dir or workload.root / "cache")
    with open_source(camera.source, fps=camera.fps) as source:
        frames = cache.get(source, camera.sampling)
        if camera.labels in ("yolo", "coco"):
            frames = _with_annotations(workload, camera, source, frames)
        if camera.teacher is not None:
            frames = _with_teacher(workload, camera, camera.teacher, cache, source, frames)
    return CameraFrames(*split_by_time(
        frames, val_fraction=camera.val_fraction, test_fraction=camera.test_fraction, gap=camera.gap_seconds
    ))


def annotated_frame_names(camera: CameraSpec, source: object, positions: Sequence[int]) -> list[str]:
    """Return the names annotations give the frames at ``positions`` of ``source``: an image folder's file names,
    or ``frame_000123`` for a video file's frame 123 (CVAT's names in its YOLO and COCO exports of a video).

    Raises:
        WorkloadError: the source is neither an image folder nor a video file.
    """
    if isinstance(source, ImageFolderSource):
        return [source.files[position].name for position in positions]
    if isinstance(source, VideoFileSource):
        return [f"{VIDEO_FRAME_PREFIX}{position:06d}" for position in positions]
    raise WorkloadError(f"camera {camera.name!r}: annotations need an image-folder or video-file source")


def _annotated_frame_count(camera: CameraSpec, source: object) -> int:
    if isinstance(source, ImageFolderSource):
        return len(source.files)
    if not isinstance(source, VideoFileSource):
        raise WorkloadError(f"camera {camera.name!r}: annotations need an image-folder or video-file source")
    count = source.frame_count
    if not count:
        raise SourceError(f"camera {camera.name!r}: the video's frames cannot be counted to match its annotations")
    return count


def _read_annotations(
    camera: CameraSpec, root: Path, source: object, positions: Sequence[int], class_names: Sequence[str]
) -> list[tuple[Box, ...]]:
    """Return the annotated boxes of the source's frames at ``positions``, in the source's pixels."""
    names = annotated_frame_names(camera, source, positions)
    sizes = [tuple(source.resolution)] * len(names)  # type: ignore[attr-defined]
    path = root / str(camera.annotations)
    if camera.labels == "yolo":
        return read_yolo_labels(path, names, sizes, class_names)
    return read_coco_annotations(path, names, sizes, class_names, by_stem=isinstance(source, VideoFileSource))


def check_annotations(camera: CameraSpec, root: Path) -> AnnotationVocabulary:
    """Read a camera's annotations against every frame of its image folder or video file, without decoding them.

    Returns:
        The class names the annotations use and where they come from (``camera_vocabulary``).

    Raises:
        WorkloadError: the camera is not labelled by annotations, its source is neither an image folder nor a
            video file, or its annotations cannot be read.
        SourceError: the source cannot be opened, or the annotations do not match the frames (a label file or
            image entry without a frame, a frame the COCO file does not mention, an unknown class, a malformed
            line: the file and line are named).
    """
    if camera.labels not in ("yolo", "coco"):
        raise WorkloadError(f"camera {camera.name!r} is not labelled by annotations")
    vocabulary = camera_vocabulary(camera, root)
    with open_source(camera.source, fps=camera.fps) as source:
        _read_annotations(camera, root, source, range(_annotated_frame_count(camera, source)), vocabulary.names)
    return vocabulary


def _with_annotations(workload: Workload, camera: CameraSpec, source: object, frames: FrameSet) -> FrameSet:
    positions = [int(i) for i in frames.indices]
    class_names = camera_vocabulary(camera, workload.root).names
    boxes = _read_annotations(camera, workload.root, source, positions, class_names)
    width, height = frames.resolution
    source_width, source_height = source.resolution  # type: ignore[attr-defined]
    scale_x, scale_y = width / source_width, height / source_height
    scaled = tuple(tuple(box.scaled(scale_x, scale_y) for box in frame_boxes) for frame_boxes in boxes)
    return FrameSet(frames.images, frames.timestamps, frames.indices, scaled)


def _with_teacher(
    workload: Workload, camera: CameraSpec, teacher: TeacherSpec, cache: FrameCache, source: CameraSource,
    frames: FrameSet,
) -> FrameSet:
    """Return ``frames`` (sampled from the open ``source``) with the teacher's boxes, scaled to the frames' size:
    read from the frame cache when this teacher already labelled them, else detected on the frames at the
    teacher's frame size and stored."""
    size = teacher.frame_size or frames.resolution
    spec = dataclasses.replace(camera.sampling, size=tuple(size))
    frames_key = cache.key(source, spec)
    seen = frames if tuple(size) == tuple(frames.resolution) else cache.get(source, spec)
    if len(seen) != len(frames) or list(seen.indices) != list(frames.indices):
        raise SourceError(f"camera {camera.name!r}: the teacher's frames at {size} are not the camera's frames")
    key = None if frames_key is None else labels_key(teacher, workload.root, frames_key)
    stored = None if key is None else cache.root / f"teacher-{key}.json"
    boxes = None if stored is None else load_labels(stored, len(frames))
    if boxes is None:
        model = teacher.build(workload.root)
        scale = (frames.resolution[0] / size[0], frames.resolution[1] / size[1])
        boxes = detect(teacher, model, np.asarray(seen.images), scale)
        if stored is not None:
            save_labels(stored, boxes)
    return FrameSet(frames.images, frames.timestamps, frames.indices, tuple(boxes))


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

    Ground-truth, annotated and teacher-detector cameras label frames from their boxes. Cameras labelled by each
    query's own model label them with the query's unmerged model (``teacher`` builds it; by default the
    workload's weights).

    Raises:
        WorkloadError: a camera without ground truth is not labelled by annotations or a teacher.
        QueryError: boxes carry class names outside the task's vocabulary.
    """
    camera = workload.camera(entry.query.camera)
    task = entry.query.task
    parts = (frames.train, frames.val, frames.test)
    if camera.labelled_by_own_model:
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


def weights_file(workload: Workload, entry: QueryEntry) -> Path:
    """Return where a query's unmerged weights are written when the engine trains them: ``weights/NAME.safetensors``
    in the workload's folder."""
    return workload.root / "weights" / f"{entry.name}.safetensors"


def train_unmerged(
    workload: Workload,
    entry: QueryEntry,
    frames: CameraFrames,
    args: TrainArgs,
    *,
    weights: Path | None = None,
    progress: Progress | None = None,
) -> tuple[QueryEntry, TrainResult, QueryFrames]:
    """Train a query's unmerged model from scratch on its camera's training frames, measure it (``measure_unmerged``)
    and write its weights to ``weights`` (by default ``weights_file``).

    Returns:
        The measured entry pointing at its new weights (relative to the workload's folder when they are inside it,
        else absolute), the training result, and the labelled frames it was trained and measured on.

    Raises:
        WorkloadError: the camera is labelled by the query's own model (``teacher``), which is what is missing, or
            gives fewer than ``MIN_TRAIN_FRAMES`` training frames.
        TrainingError: the loss diverged.
        GemelError: the frames cannot be labelled.
    """
    if workload.camera(entry.query.camera).labelled_by_own_model:
        raise WorkloadError(
            f"query {entry.name!r}: camera {entry.query.camera!r} is labelled by the query's own model, so there is "
            "nothing to train it on; label the camera with annotations (yolo, coco), a teacher detector or its "
            "ground truth"
        )
    labelled = query_data(workload, entry, frames)
    if len(labelled.train) < MIN_TRAIN_FRAMES:
        raise WorkloadError(
            f"query {entry.name!r}: camera {entry.query.camera!r} gives {len(labelled.train)} training frame(s); "
            f"training needs at least {MIN_TRAIN_FRAMES} (give the camera more frames)"
        )
    model = setup(entry.query, args, **entry.builder_args)
    result = fit(model, labelled.train, entry.query.task, args, progress=progress)
    measured = measure_unmerged(entry, model, labelled)  # before saving: the weights keep its BatchNorm statistics
    written = save_checkpoint(model, weights or weights_file(workload, entry))
    inside = written.is_relative_to(workload.root)
    return dataclasses.replace(
        measured, weights=str(written.relative_to(workload.root) if inside else written)
    ), result, labelled


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
