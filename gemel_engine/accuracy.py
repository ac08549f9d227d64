"""The one way Gemel measures a model's accuracy, and how sure that figure is.

Unmerged and merged models, in the demo builder, the search, bundles and benchmarks, are all measured by
``measure``: BatchNorm statistics re-estimated from the same training batches every time (a fixed seed), then
top-1 accuracy or mAP@0.5 on one frame set. Evaluating the same weights twice gives the same number.

Every figure carries a 95% interval from a **block bootstrap over time**: the frames of a set are in time order
and neighbouring frames of a camera show the same objects, so resampling single frames would treat near-copies
as independent evidence and give intervals too narrow. Instead the set is cut into consecutive blocks of about
``sqrt(n)`` frames (each spans several seconds of the stream, longer than an object stays in view in the demo
scenes), blocks are drawn with replacement, and the 2.5th and 97.5th percentiles of the resampled metric form
the interval. More frames give more blocks and a narrower interval.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from gemel_engine.queries import QueryError, Target, Task, predict, score
from gemel_engine.train import LabelledFrames, recalibrate_batchnorm

__all__ = [
    "CALIBRATION_SEED",
    "Measurement",
    "TargetTest",
    "block_bootstrap_interval",
    "chance_accuracy",
    "chance_measurement",
    "chance_shortfall",
    "check_accept_confidence",
    "lead_over_chance",
    "measure",
    "measure_predictions",
    "measure_sets",
    "measured_predictions",
    "parse_accept_confidence",
]

# BatchNorm re-estimation draws its batches with this seed on every measurement, so a figure depends only on
# the weights and the frames.
CALIBRATION_SEED = 0
# Resamples of the bootstrap: classification resamples are cheap; an mAP resample recomputes the metric.
CLASSIFICATION_RESAMPLES = 2000
DETECTION_RESAMPLES = 200
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Measurement:
    """An accuracy (top-1 or mAP@0.5) on ``frames`` frames with its 95% interval ``[low, high]``."""

    accuracy: float
    low: float
    high: float
    frames: int

    @property
    def interval(self) -> tuple[float, float]:
        """Return ``(low, high)``."""
        return self.low, self.high

    def describe(self) -> str:
        """Return ``accuracy [low, high]`` to three decimals."""
        return f"{self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_json(self) -> dict[str, Any]:
        """Return ``{"accuracy", "interval": [low, high], "frames"}`` rounded to four decimals."""
        return {"accuracy": round(self.accuracy, 4), "interval": [round(self.low, 4), round(self.high, 4)],
                "frames": self.frames}

    @classmethod
    def from_json(cls, data: object) -> Measurement:
        """Return the measurement ``to_json`` wrote.

        Raises:
            QueryError: ``data`` is not such an object, or its numbers are not finite and ordered.
        """
        try:
            accuracy = float(data["accuracy"])  # type: ignore[index]
            low, high = (float(v) for v in data["interval"])  # type: ignore[index]
            frames = int(data["frames"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError) as exc:
            raise QueryError(f"not a measurement: {data!r:.200}") from exc
        if not all(math.isfinite(v) for v in (accuracy, low, high)) or not low <= accuracy <= high or frames < 1:
            raise QueryError(f"not a measurement: {data!r:.200}")
        return cls(accuracy, low, high, frames)


def _block_starts(count: int) -> np.ndarray:
    length = max(1, math.ceil(math.sqrt(count)))
    return np.arange(0, count, length)


def block_bootstrap_interval(
    predictions: Sequence[Target],
    targets: Sequence[Target],
    task: Task,
    *,
    resamples: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Return the 95% block-bootstrap interval ``(low, high)`` of ``score(predictions, targets, task)``.

    The frames must be in time order (a split's frames are). Blocks are ``ceil(sqrt(n))`` consecutive frames;
    each resample draws ``ceil(n / block)`` blocks with replacement. The seed is fixed, so the same inputs give
    the same interval.

    Raises:
        QueryError: the two sequences differ in length or are empty.
    """
    return _percentile_interval(_resampled_leads(predictions, None, targets, task, 0.0, resamples=resamples,
                                                 seed=seed))


def _drawn_time_blocks(
    predictions: int, count: int, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the time blocks of ``count`` frames (start and end indices) and, per resample, the blocks it draws.

    Raises:
        QueryError: ``predictions`` differs from ``count``, or there are no frames.
    """
    if predictions != count or count == 0:
        raise QueryError(f"cannot score {predictions} predictions against {count} targets")
    starts = _block_starts(count)
    ends = np.append(starts[1:], count)
    drawn = np.random.default_rng(seed).integers(0, len(starts), size=(resamples, len(starts)))
    return starts, ends, drawn


def _resampled_means(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    block_sums = np.add.reduceat(values, starts)
    block_sizes = (ends - starts).astype(np.float64)
    return block_sums[drawn].sum(axis=1) / block_sizes[drawn].sum(axis=1)


def _percentile_interval(scores: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def measure_predictions(predictions: Sequence[Target], frames: LabelledFrames, task: Task) -> Measurement:
    """Return the accuracy of ``predictions`` on ``frames`` with its 95% interval (see the module's notes).

    Raises:
        QueryError: the predictions do not match the frames, or there are none.
    """
    accuracy = score(predictions, frames.targets, task)
    low, high = block_bootstrap_interval(predictions, frames.targets, task)
    return Measurement(accuracy, min(low, accuracy), max(high, accuracy), len(frames))


def measure(
    model: nn.Module,
    frames: LabelledFrames,
    task: Task,
    *,
    calibration: LabelledFrames | None,
    interval: bool = True,
) -> Measurement:
    """Measure ``model`` on ``frames``: BatchNorm statistics re-estimated from ``calibration`` (training frames)
    with the fixed ``CALIBRATION_SEED``, then the task's metric, with its 95% interval unless ``interval`` is
    False (then ``low == high == accuracy``; in-round checks need no interval).

    The model is left in eval mode with the re-estimated statistics; measuring the same weights again gives the
    same figure. ``calibration=None`` keeps the statistics the model has (models without BatchNorm).

    Returns:
        The measurement.

    Raises:
        QueryError: ``frames`` is empty.
    """
    return measure_sets(model, (frames,), task, calibration=calibration, interval=interval)[0]


def measure_sets(
    model: nn.Module,
    sets: Sequence[LabelledFrames],
    task: Task,
    *,
    calibration: LabelledFrames | None,
    interval: bool = True,
) -> list[Measurement]:
    """Measure ``model`` on each frame set of ``sets`` as ``measure`` does, re-estimating BatchNorm once.

    Returns:
        One measurement per set, in order.

    Raises:
        QueryError: a set is empty.
    """
    measured = []
    for frames, predictions in zip(sets, measured_predictions(model, sets, task, calibration=calibration),
                                   strict=True):
        if interval:
            measured.append(measure_predictions(predictions, frames, task))
        else:
            accuracy = score(predictions, frames.targets, task)
            measured.append(Measurement(accuracy, accuracy, accuracy, len(frames)))
    return measured


def measured_predictions(
    model: nn.Module, sets: Sequence[LabelledFrames], task: Task, *, calibration: LabelledFrames | None
) -> list[list[Target]]:
    """Return the predictions ``measure_sets`` scores: BatchNorm statistics re-estimated once from
    ``calibration`` with the fixed ``CALIBRATION_SEED`` (None keeps the model's), then the model's answers on each
    set of ``sets``, in order. The model is left in eval mode."""
    if calibration is not None:
        recalibrate_batchnorm(model, calibration, task, seed=CALIBRATION_SEED)
    model.eval()
    return [predict(model, frames.images, task) for frames in sets]


def check_accept_confidence(value: object) -> float | None:
    """Return ``value`` when it is an acceptance confidence: None (the point figure decides) or a number in
    [0.5, 1).

    Raises:
        QueryError: anything else.
    """
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value < 1
    ):
        raise QueryError(f"expected 'point' or a confidence in [0.5, 1), got {value!r}")
    return value


def parse_accept_confidence(text: str) -> float | None:
    """Return the acceptance confidence ``text`` names: None for ``point``, else its number.

    Raises:
        QueryError: ``text`` is neither ``point`` nor a number in [0.5, 1).
    """
    if text.strip() == "point":
        return None
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"expected 'point' or a confidence in [0.5, 1), got {text!r}") from None
    return check_accept_confidence(value)


@dataclass(frozen=True)
class TargetTest:
    """How a merged model's accuracy on a frame set is judged against its target: by the point figure
    (``confidence`` None), or only when the frames show at ``confidence`` (one-sided) that the target is met.

    A relative target (``relative`` × the unmerged model's accuracy) is judged **paired**: ``reference`` holds the
    unmerged model's predictions on the same frames, and every block-bootstrap resample scores both models on
    the same time blocks, so the bound is that of the merged model's lead over the target itself, far tighter
    than the two accuracies' intervals side by side. An absolute target bounds the merged accuracy alone.
    """

    # Accuracy the merged model must keep on the frames (the point target).
    required: float
    # One-sided confidence the margin must be above 0 at (None: the point figure decides).
    confidence: float | None = None
    # The unmerged model's predictions on the same frames (relative targets).
    reference: tuple[Target, ...] | None = None
    # The target's fraction of the unmerged accuracy (relative targets).
    relative: float | None = None

    def __post_init__(self) -> None:
        check_accept_confidence(self.confidence)
        if (self.reference is None) != (self.relative is None):
            raise QueryError("a paired target test needs both the reference predictions and the relative target")

    def judge(self, predictions: Sequence[Target], frames: LabelledFrames, task: Task) -> tuple[float, float]:
        """Return ``(accuracy, lower)``: the predictions' score on ``frames``, and the one-sided lower bound at
        ``confidence`` of its margin above ``required`` (the margin itself when ``confidence`` is None). The bound
        is the margin less the distance from the full-set figure to the resamples' ``1 - confidence`` quantile
        (the frame set's own noise). The target is met when ``lower >= 0``.

        Raises:
            QueryError: the predictions or the reference do not match the frames, or there are none.
        """
        accuracy = score(predictions, frames.targets, task)
        margin = accuracy - self.required
        if self.confidence is None:
            return accuracy, margin
        references = None if self.reference is None else list(self.reference)
        relative = self.relative or 0.0
        resampled = _resampled_leads(predictions, references, frames.targets, task, relative)
        full = accuracy if references is None else accuracy - relative * score(references, frames.targets, task)
        spread = full - float(np.percentile(resampled, (1 - self.confidence) * 100))
        return accuracy, margin - max(spread, 0.0)


def _lead(
    predictions: Sequence[Target], reference: Sequence[Target] | None, targets: Sequence[Target], task: Task,
    relative: float,
) -> float:
    own = score(predictions, targets, task)
    return own if reference is None else own - relative * score(reference, targets, task)


def _resampled_leads(
    predictions: Sequence[Target], reference: Sequence[Target] | None, targets: Sequence[Target], task: Task,
    relative: float, *, resamples: int | None = None, seed: int = 0,
) -> np.ndarray:
    """Return the block-bootstrap resamples of ``_lead`` (one draw of time blocks shared by both models; with no
    ``reference``, the resamples of the predictions' own score)."""
    count = len(targets)
    if reference is not None and len(reference) != count:
        raise QueryError(f"cannot pair {len(reference)} reference predictions with {count} frames")
    resamples = resamples or (DETECTION_RESAMPLES if task.is_detection else CLASSIFICATION_RESAMPLES)
    starts, ends, drawn = _drawn_time_blocks(len(predictions), count, resamples, seed)
    if task.is_detection:
        values = []
        for row in drawn:
            picks = [i for block in row for i in range(starts[block], ends[block])]
            values.append(_lead([predictions[i] for i in picks],
                                None if reference is None else [reference[i] for i in picks],
                                [targets[i] for i in picks], task, relative))
        return np.asarray(values)
    per_frame = np.fromiter((p == t for p, t in zip(predictions, targets, strict=True)), dtype=np.float64,
                            count=count)
    if reference is not None:
        per_frame -= relative * np.fromiter((r == t for r, t in zip(reference, targets, strict=True)),
                                            dtype=np.float64, count=count)
    return _resampled_means(per_frame, starts, ends, drawn)


def chance_accuracy(targets: Sequence[Target]) -> float | None:
    """Return the accuracy of always answering the most frequent class (None for detection targets)."""
    if not targets or isinstance(targets[0], dict):
        return None
    return Counter(targets).most_common(1)[0][1] / len(targets)


def chance_measurement(train_targets: Sequence[Target], frames: LabelledFrames, task: Task) -> Measurement | None:
    """Measure the commonest-class baseline on ``frames``: always answering the class most frequent in
    ``train_targets`` (what a model that learned nothing from its training frames would answer), scored and given
    a 95% interval exactly as a model's predictions are.

    Returns:
        The baseline's measurement, or None for detection (no single answer is a detector's baseline) or
        without training targets.

    Raises:
        QueryError: ``frames`` is empty.
    """
    if task.is_detection or not train_targets:
        return None
    return measure_predictions([_commonest(train_targets)] * len(frames), frames, task)


def lead_over_chance(
    predictions: Sequence[Target], frames: LabelledFrames, train_targets: Sequence[Target], task: Task
) -> Measurement | None:
    """Return how far ``predictions`` lead the commonest-class baseline (see ``chance_measurement``) on ``frames``:
    model accuracy minus baseline accuracy, with a **paired** 95% block-bootstrap interval. Both are scored on the
    same frames, so each resample draws the same time blocks for the two and the interval is the lead's own, far
    narrower than the two accuracies' intervals side by side (a busy stretch of the stream moves both alike).

    Returns:
        The lead as a Measurement (``accuracy`` is the lead, in [-1, 1]), or None for detection or without
        training targets.

    Raises:
        QueryError: the predictions do not match the frames, or there are none.
    """
    if task.is_detection or not train_targets:
        return None
    baseline = [_commonest(train_targets)] * len(frames)
    low, high = _percentile_interval(_resampled_leads(predictions, baseline, frames.targets, task, 1.0))
    lead = _lead(predictions, baseline, frames.targets, task, 1.0)
    return Measurement(lead, min(low, lead), max(high, lead), len(frames))


def _commonest(targets: Sequence[Target]) -> Target:
    return Counter(targets).most_common(1)[0][0]


def chance_shortfall(
    model: Measurement | None, chance: Measurement | None, lead: Measurement | None, *, detection: bool
) -> str | None:
    """Return, in one sentence, why ``model`` is not clearly better than a model that learned nothing.

    For classification: its paired ``lead`` over the commonest-class baseline ``chance`` (``lead_over_chance``)
    is not above 0 at 95%. For ``detection``: its mAP interval is not above 0, what a detector that finds nothing
    scores.

    Returns:
        The sentence, or None when the model clearly is better, or when what the verdict needs (the model's
        measurement; for classification, the baseline and the lead) is not measured.
    """
    if detection:
        if model is None or model.low > 0.0:
            return None
        return f"its test mAP {model.describe()} is not clearly above 0, what a detector that finds nothing scores"
    if model is None or chance is None or lead is None or lead.low > 0.0:
        return None
    return (f"its test accuracy {model.describe()} leads always answering the commonest class, "
            f"{chance.describe()}, by {lead.describe()}: not clearly above 0")
