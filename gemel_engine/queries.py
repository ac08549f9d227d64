"""Queries: a camera, an architecture, a task and an accuracy target; targets, predictions and metrics.

Tasks:

- ``presence``: is any object of the query's classes in view? (2 outputs: absent, present)
- ``count``: how many objects of the query's classes, in bins (``count_edges=(1, 3)`` gives 0, 1-2, 3+)
- ``type``: which of the query's classes the largest object in view belongs to, or none (classes + 1 outputs):
  fine-grained when the classes look alike (a bus and a truck)
- ``detection``: boxes of the query's classes (torchvision convention: label 0 is the background)

Metrics: top-1 accuracy for classification tasks, mAP@0.5 for detection (torchmetrics with the
faster-coco-eval backend).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gemel_engine import zoo
from gemel_engine.data.frames import Box, check_vocabulary
from gemel_engine.data.synthetic import CLASSES
from gemel_engine.errors import GemelError
from gemel_engine.plan import check_model_name

TaskKind = Literal["presence", "count", "type", "detection"]
TASK_KINDS: tuple[TaskKind, ...] = ("presence", "count", "type", "detection")
# Highest count bin edge: more objects than any frame shows.
MAX_COUNT_EDGE = 10_000
ClassTarget = int
DetectionTarget = dict[str, torch.Tensor]
Target = ClassTarget | DetectionTarget


class QueryError(GemelError):
    """A query, task or accuracy target that is malformed or does not fit its architecture."""


@dataclass(frozen=True)
class Task:
    """What a query asks of each frame; checked on creation."""

    # "presence", "count", "type" or "detection".
    kind: TaskKind
    # Object classes the query looks for (names from the camera's vocabulary, e.g. car, person).
    classes: tuple[str, ...]
    # Count task only: increasing bin edges; (1, 3) makes the bins 0, 1-2 and 3 or more.
    count_edges: tuple[int, ...] = (1, 3)
    # Boxes smaller than this many pixels (at the training size) are ignored: too small to see.
    min_box_area: float = 4.0
    # Every class name the labels may use; a query class outside it is refused.
    vocabulary: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise QueryError(f"task kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "count_edges", tuple(self.count_edges))
        object.__setattr__(self, "vocabulary", check_vocabulary(self.vocabulary, "task vocabulary", error=QueryError))
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise QueryError(f"task classes must be non-empty and distinct, got {list(self.classes)}")
        unknown = [name for name in self.classes if name not in self.vocabulary]
        if unknown:
            raise QueryError(f"unknown class name(s) {unknown}; known: {', '.join(self.vocabulary)}")
        edges = self.count_edges
        if self.kind == "count" and (
            not edges
            or any(not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= MAX_COUNT_EDGE for e in edges)
            or list(edges) != sorted(set(edges))
        ):
            raise QueryError(f"count_edges must be increasing integers in [1, {MAX_COUNT_EDGE}], got {list(edges)}")
        area = self.min_box_area
        if isinstance(area, bool) or not isinstance(area, int | float) or not math.isfinite(area) or area < 0:
            raise QueryError(f"min_box_area must be a number >= 0, got {self.min_box_area!r}")

    @property
    def is_detection(self) -> bool:
        """Return whether the task is detection (boxes) rather than classification."""
        return self.kind == "detection"

    @property
    def num_outputs(self) -> int:
        """Return the model's class count: 2 (presence), bins (count), classes + none (type), classes + background
        (detection)."""
        if self.kind == "presence":
            return 2
        if self.kind == "count":
            return len(self.count_edges) + 1
        return len(self.classes) + 1

    @property
    def output_names(self) -> tuple[str, ...]:
        """Return a readable name per output class (for reports and charts)."""
        if self.kind == "presence":
            return ("absent", "present")
        if self.kind == "count":
            lows = (0, *self.count_edges)
            highs = (*(e - 1 for e in self.count_edges), None)
            return tuple(
                f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
                for lo, hi in zip(lows, highs, strict=True)
            )
        if self.kind == "type":
            return ("none", *self.classes)
        return ("background", *self.classes)

    def relevant(self, boxes: Sequence[Box]) -> list[Box]:
        """Return the boxes of the task's classes that are large enough to count."""
        return [b for b in boxes if b.label in self.classes and b.width * b.height >= self.min_box_area]

    def target(self, boxes: Sequence[Box]) -> Target:
        """Return the training/evaluation target for a frame with these ground-truth ``boxes``.

        Raises:
            QueryError: a box carries a label outside the task's vocabulary.
        """
        unknown = sorted({b.label for b in boxes if b.label not in self.vocabulary})
        if unknown:
            raise QueryError(f"labels use unknown class name(s) {unknown}; known: {', '.join(self.vocabulary)}")
        kept = self.relevant(boxes)
        if self.kind == "presence":
            return int(bool(kept))
        if self.kind == "count":
            return sum(1 for edge in self.count_edges if len(kept) >= edge)
        if self.kind == "type":
            if not kept:
                return 0
            largest = max(kept, key=lambda b: (b.width * b.height, -self.classes.index(b.label)))
            return 1 + self.classes.index(largest.label)
        return {
            "boxes": torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in kept], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.classes.index(b.label) + 1 for b in kept], dtype=torch.int64),
        }

    def to_json(self) -> dict[str, Any]:
        """Return the task as JSON-ready data (with its vocabulary when it is not the synthetic scenes' own)."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "classes": list(self.classes),
            "count_edges": list(self.count_edges),
            "min_box_area": self.min_box_area,
        }
        if self.vocabulary != CLASSES:
            data["vocabulary"] = list(self.vocabulary)
        return data

    @classmethod
    def from_json(cls, data: object, *, vocabulary: Sequence[str] = CLASSES) -> Task:
        """Return the task described by ``data``; ``vocabulary`` is its class vocabulary when ``data`` names none.

        Raises:
            QueryError: missing or malformed fields.
        """
        if not isinstance(data, dict):
            raise QueryError(f"task must be an object, got {type(data).__name__}")
        try:
            return cls(
                kind=data["kind"],
                classes=tuple(data["classes"]),
                count_edges=tuple(data.get("count_edges", (1, 3))),
                min_box_area=data.get("min_box_area", 4.0),
                vocabulary=data.get("vocabulary", vocabulary),
            )
        except (KeyError, TypeError) as exc:
            raise QueryError(f"malformed task {data!r}: {exc}") from None


@dataclass(frozen=True)
class AccuracyTarget:
    """What accuracy a query must keep after merging: relative to its unmerged accuracy, or absolute."""

    # Required accuracy as a fraction of the unmerged accuracy (default 0.95x) ...
    relative: float | None = 0.95
    # ... or as an absolute metric value; exactly one of the two is set.
    absolute: float | None = None

    def __post_init__(self) -> None:
        if (self.relative is None) == (self.absolute is None):
            raise QueryError("an accuracy target is either relative or absolute, not both or neither")
        value = self.relative if self.relative is not None else self.absolute
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            raise QueryError(f"accuracy target must be in (0, 1], got {value!r}")

    def required(self, unmerged_accuracy: float) -> float:
        """Return the accuracy a merged model must reach, given the unmerged model's accuracy."""
        if self.absolute is not None:
            return self.absolute
        return self.relative * unmerged_accuracy  # type: ignore[operator]

    def to_json(self) -> dict[str, float]:
        """Return the target as JSON-ready data."""
        return {"relative": self.relative} if self.relative is not None else {"absolute": self.absolute}  # type: ignore[dict-item]

    @classmethod
    def from_json(cls, data: object) -> AccuracyTarget:
        """Return the target described by ``data`` (``{"relative": x}`` or ``{"absolute": x}``).

        Raises:
            QueryError: anything else.
        """
        if not isinstance(data, dict) or set(data) - {"relative", "absolute"} or not data:
            raise QueryError(f"accuracy target must be {{'relative': x}} or {{'absolute': x}}, got {data!r}")
        return cls(relative=data.get("relative"), absolute=data.get("absolute"))


@dataclass(frozen=True)
class Query:
    """One camera watched by one model for one task, with an accuracy target."""

    name: str
    camera: str
    arch: str
    task: Task
    target: AccuracyTarget = field(default_factory=AccuracyTarget)

    def __post_init__(self) -> None:
        try:
            check_model_name(self.name)
        except GemelError as exc:
            raise QueryError(f"query name: {exc}") from None
        spec = zoo.get_spec(self.arch)
        if self.task.is_detection != (spec.task == "detection"):
            raise QueryError(
                f"query {self.name!r}: a {self.task.kind} task needs a "
                f"{'detection' if self.task.is_detection else 'classification'} architecture, "
                f"and {self.arch} is a {spec.task} model"
            )

    def build_model(self, *, device: torch.device | str | None = None, **kwargs: Any) -> nn.Module:
        """Return an untrained model of the query's architecture with the task's head.

        Raises:
            UnknownArchitectureError: the architecture is not registered.
        """
        return zoo.get_model(self.arch, num_classes=self.task.num_outputs, device=device, **kwargs)


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return N×H×W×3 uint8 images as an N×3×H×W float tensor in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def iter_batches(count: int, batch_size: int) -> Iterator[slice]:
    """Yield consecutive slices covering ``range(count)`` in steps of ``batch_size``."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, task: Task, *, batch_size: int = 64, score_threshold: float = 0.5
) -> list[Target]:
    """Return the model's prediction per image: a class index, or boxes/labels/scores for detection.

    Detection predictions keep every box (for mAP); ``score_threshold`` only matters to callers that
    turn predictions into labels (see ``teacher_targets``).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[Target] = []
    for window in iter_batches(len(images), batch_size):
        batch = images_to_tensor(images[window], device)
        if task.is_detection:
            for result in model(list(batch)):
                outputs.append({key: value.detach().cpu() for key, value in result.items()})
        else:
            outputs.extend(int(i) for i in model(batch).argmax(dim=1).cpu())
    model.train(was_training)
    return outputs


def teacher_targets(predictions: Sequence[Target], task: Task, *, score_threshold: float = 0.5) -> list[Target]:
    """Return labels made from a teacher model's predictions (fidelity to the original model).

    Classification predictions are the labels; detection keeps boxes scoring at least ``score_threshold``.
    """
    if not task.is_detection:
        return list(predictions)
    labels: list[Target] = []
    for prediction in predictions:
        if not isinstance(prediction, dict):
            raise QueryError("detection teacher predictions must be dicts of boxes, labels and scores")
        keep = prediction["scores"] >= score_threshold
        labels.append({"boxes": prediction["boxes"][keep], "labels": prediction["labels"][keep]})
    return labels


def score(predictions: Sequence[Target], targets: Sequence[Target], task: Task) -> float:
    """Return top-1 accuracy (classification) or mAP@0.5 (detection) of ``predictions`` on ``targets``.

    Raises:
        QueryError: the two sequences differ in length or are empty.
    """
    if len(predictions) != len(targets) or not targets:
        raise QueryError(f"cannot score {len(predictions)} predictions against {len(targets)} targets")
    if not task.is_detection:
        return sum(int(p == t) for p, t in zip(predictions, targets, strict=True)) / len(targets)
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    metric.update(
        [
            {"boxes": p["boxes"], "scores": p.get("scores", torch.ones(len(p["boxes"]))), "labels": p["labels"]}
            for p in predictions  # type: ignore[union-attr]
        ],
        [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],  # type: ignore[index]
    )
    value = float(metric.compute()["map_50"])
    return max(value, 0.0)  # torchmetrics reports -1 when no frame has a ground-truth box


def evaluate(
    model: nn.Module, images: np.ndarray, targets: Sequence[Target], task: Task, *, batch_size: int = 64
) -> float:
    """Return the model's accuracy metric on ``images`` against ``targets`` (see ``score``)."""
    return score(predict(model, images, task, batch_size=batch_size), targets, task)
