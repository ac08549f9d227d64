"""A teacher: a (typically larger) detector whose detections label a camera's frames for every query on it.

A camera without ground truth or annotations can name a teacher: its boxes (those scoring at least the
threshold) become the frames' boxes, and each query's labels follow from them as from annotations (a presence
query: any box of its classes; a count: how many; detection: the boxes themselves). The labels are computed once
per frame set, teacher and threshold, and kept in the frame cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemel_engine import zoo
from gemel_engine.data.annotations import COCO_CLASSES
from gemel_engine.data.frames import Box, check_vocabulary
from gemel_engine.errors import GemelError
from gemel_engine.fileio import file_sha256, write_json_atomically
from gemel_engine.queries import images_to_tensor, iter_batches

# The label ids torchvision's COCO-trained detectors emit run 1..90 (0 is the background); these ten name no class.
_COCO_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


def _coco_detection_labels() -> tuple[str, ...]:
    names = iter(COCO_CLASSES)
    return tuple("" if label in _COCO_UNUSED_IDS else next(names) for label in range(1, 91))


# The class of each label id 1..90 of torchvision's COCO detectors ("" for the ids that name none).
COCO_DETECTION_LABELS: tuple[str, ...] = _coco_detection_labels()
TEACHER_LABELS_FORMAT = "gemel.teacher-labels"
TEACHER_BATCH = 8


class TeacherError(GemelError):
    """A teacher that cannot label: not a detector, labels that do not fit it, weights that cannot be read."""


@dataclass(frozen=True)
class TeacherSpec:
    """A detector that labels a camera's frames: its architecture, weights and the class each label id names."""

    # A registered detection architecture (gemel_engine.zoo).
    arch: str
    # The weights file, relative to the workload file (or absolute).
    weights: str
    # The class name of each label id from 1 on ("" for an id that names none); "coco" in the file:
    # torchvision's COCO label ids (COCO_DETECTION_LABELS).
    labels: tuple[str, ...]
    # Keyword arguments of the zoo builder beyond num_classes (a detector's min_size, anchor_scale...).
    builder_args: dict[str, Any] = field(default_factory=dict)
    # Boxes scoring below this are not labels.
    score_threshold: float = 0.5
    # The frame size the teacher sees (width, height); None: the camera's own sampled size.
    frame_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        try:
            spec = zoo.get_spec(self.arch)
        except GemelError as exc:
            raise TeacherError(f"teacher: {exc}") from None
        if spec.task != "detection":
            raise TeacherError(f"teacher {self.arch!r} is a classifier: a teacher must be a detection model")
        if not self.labels or not any(self.labels):
            raise TeacherError("teacher: name the class of its label ids (1, 2, ...) or 'coco'")
        check_vocabulary(self.vocabulary, "teacher labels", error=TeacherError)
        if not (isinstance(self.score_threshold, int | float) and math.isfinite(self.score_threshold)
                and 0.0 <= self.score_threshold <= 1.0):
            raise TeacherError(f"teacher: score_threshold must be in [0, 1], got {self.score_threshold!r}")
        if self.frame_size is not None and (
            len(self.frame_size) != 2 or not all(isinstance(v, int) and 16 <= v <= 4096 for v in self.frame_size)
        ):
            raise TeacherError(f"teacher: frame_size must be [width, height] of 16..4096 pixels, got {self.frame_size}")

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Return the class names the teacher's labels use (each once, in label-id order)."""
        return tuple(dict.fromkeys(name for name in self.labels if name))

    def to_json(self) -> dict[str, Any]:
        """Return the teacher as JSON-ready data."""
        return {
            "arch": self.arch, "weights": self.weights,
            "labels": "coco" if self.labels == COCO_DETECTION_LABELS else list(self.labels),
            "builder_args": self.builder_args, "score_threshold": self.score_threshold,
            "frame_size": list(self.frame_size) if self.frame_size else None,
        }

    @classmethod
    def from_json(cls, data: object) -> TeacherSpec:
        """Return the teacher ``to_json`` wrote.

        Raises:
            TeacherError: a missing or malformed field.
        """
        if not isinstance(data, dict):
            raise TeacherError(f"a camera's teacher must be an object, got {data!r:.60}")
        try:
            labels = data["labels"]
            size = data.get("frame_size")
            return cls(
                arch=str(data["arch"]), weights=str(data["weights"]),
                labels=COCO_DETECTION_LABELS if labels == "coco" else tuple(str(name) for name in labels),
                builder_args=dict(data.get("builder_args") or {}),
                score_threshold=float(data.get("score_threshold", 0.5)),
                frame_size=tuple(int(v) for v in size) if size else None,  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TeacherError(f"malformed teacher ({exc!r:.80})") from None

    def build(self, root: Path) -> torch.nn.Module:
        """Return the teacher with its weights loaded (eval mode); ``root`` is the folder relative weights are in.

        Raises:
            TeacherError: the architecture refuses its builder arguments.
            WeightsError: the weights cannot be read safely or do not fit (its label ids included).
        """
        try:
            model = zoo.get_model(self.arch, num_classes=len(self.labels) + 1, **self.builder_args)
        except (TypeError, ValueError) as exc:
            raise TeacherError(f"teacher {self.arch!r}: {exc}") from None
        return zoo.load_weights(model, self.weights_path(root)).eval()

    def weights_path(self, root: Path) -> Path:
        """Return the absolute path of the teacher's weights."""
        return (root / self.weights).resolve()


def detect(teacher: TeacherSpec, model: torch.nn.Module, images: np.ndarray,
           scale: tuple[float, float] = (1.0, 1.0)) -> list[tuple[Box, ...]]:
    """Return the teacher's boxes on each of N×H×W×3 ``images``: those scoring at least its threshold whose label
    id names a class, their coordinates multiplied by ``scale`` (x, y)."""
    found: list[tuple[Box, ...]] = []
    with torch.no_grad():
        for window in iter_batches(len(images), TEACHER_BATCH):
            for result in model(list(images_to_tensor(images[window]))):
                boxes = []
                for box, label, value in zip(result["boxes"].tolist(), result["labels"].tolist(),
                                             result["scores"].tolist(), strict=True):
                    name = teacher.labels[label - 1] if 1 <= label <= len(teacher.labels) else ""
                    if name and value >= teacher.score_threshold:
                        x1, y1, x2, y2 = box
                        boxes.append(Box(name, x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1]))
                found.append(tuple(boxes))
    return found


def labels_key(teacher: TeacherSpec, root: Path, frames_key: str) -> str:
    """Return the cache key of the teacher's labels on the frames cached under ``frames_key``: it changes with
    the frames, the teacher's weights (by content), its label ids, builder arguments and threshold."""
    identity = {"format": TEACHER_LABELS_FORMAT, "frames": frames_key, "teacher": teacher.to_json(),
                "weights": file_sha256(teacher.weights_path(root))}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def load_labels(path: Path, count: int) -> list[tuple[Box, ...]] | None:
    """Return the labels stored at ``path`` for ``count`` frames, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != TEACHER_LABELS_FORMAT or len(data["boxes"]) != count:
            return None
        return [tuple(Box.from_json(box) for box in frame) for frame in data["boxes"]]
    except (OSError, ValueError, KeyError, TypeError, GemelError):
        return None


def save_labels(path: Path, boxes: Sequence[tuple[Box, ...]]) -> None:
    """Store the teacher's labels at ``path`` (atomically). Returns None."""
    write_json_atomically(path, {"format": TEACHER_LABELS_FORMAT,
                                 "boxes": [[box.to_json() for box in frame] for frame in boxes]}, indent=None)
