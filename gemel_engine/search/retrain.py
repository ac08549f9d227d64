"""Joint retraining of merged models: one optimizer over the unique parameters of the affected models.

Each step draws a batch from every affected query and sums their losses, weighted toward the queries
that lag behind their targets. Every ``eval_every`` steps a check measures each affected query on its check
frames (a fixed, evenly spaced subset of its validation frames) the one way models are measured
(``gemel_engine.accuracy.measure``); the round stops as soon as every check passes, when a lagging query's
trend shows it cannot get there within the budget, when the step budget is spent, or when the search is
cancelled. Checks only decide when to stop: once the round stops, one final measurement on the whole
validation set decides which queries met their targets, so a check that passed on a lucky subset accepts
nothing. With a confidence-judged target (``TargetTest``) the final measurement must show the target met at
that confidence; when the checks passed but it does not, and steps are left, the round goes on with that
query's check bar raised by the shortfall.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from gemel_engine.accuracy import TargetTest, measure, measured_predictions
from gemel_engine.events import CancelToken
from gemel_engine.modelset import ModelSet
from gemel_engine.queries import Task, images_to_tensor
from gemel_engine.train import (
    CALIBRATION_BATCHES,
    LabelledFrames,
    TrainingError,
    draw_batch,
    joint_step,
    recalibrate_batchnorm,
)

StopReason = Literal["met", "budget", "hopeless", "cancelled", "deadline"]


@dataclass(frozen=True)
class RetrainBudget:
    """How one round of joint retraining may spend its effort; checked on creation."""

    # Most optimizer steps in a round.
    max_steps: int = 120
    # Frames per classification query per step.
    batch_size: int = 32
    # Frames per detection query per step (a detector's frame costs tens of a classifier's, and detectors
    # are trained on small batches).
    detection_batch_size: int = 8
    # AdamW learning rate.
    lr: float = 5e-4
    # Validate every this many steps while queries are far from their targets ...
    eval_every: int = 20
    # ... and every this many once a lagging query is within ``near_margin`` of its target.
    eval_every_near: int = 5
    # How close (in accuracy) counts as near.
    near_margin: float = 0.03
    # Most wall-clock seconds in a round (None: no limit besides max_steps).
    max_seconds: float | None = None
    # Weight of distillation from the unmerged model's outputs (classification; 0 turns it off).
    distill: float = 0.0
    # Distillation temperature.
    temperature: float = 2.0
    # Scale the loss of a query by 1 + lag_weight × (its shortfall below target).
    lag_weight: float = 4.0
    # Give up on a round once this fraction of the budget is spent and a query's trend cannot reach its target.
    hopeless_after: float = 0.5
    # Most validation frames an in-round check looks at (an evenly spaced subset; the final measurement of a
    # round uses them all).
    check_frames: int = 150

    def __post_init__(self) -> None:
        counts = ("max_steps", "batch_size", "detection_batch_size", "eval_every", "eval_every_near", "check_frames")
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise TrainingError(f"{name} must be a positive number, got {value!r}")
        for name in ("distill", "lag_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise TrainingError(f"{name} must be a number >= 0, got {value!r}")
        if self.max_seconds is not None and (not math.isfinite(self.max_seconds) or self.max_seconds <= 0):
            raise TrainingError(f"max_seconds must be a positive number, got {self.max_seconds!r}")
        if not 0 <= self.hopeless_after <= 1 or not 0 <= self.near_margin <= 1:
            raise TrainingError("hopeless_after and near_margin must be in [0, 1]")

    def interval(self, shortfalls: list[float]) -> int:
        """Return the steps until the next validation, given each lagging query's shortfall below target."""
        near = shortfalls and max(shortfalls) <= self.near_margin
        return min(self.eval_every, self.eval_every_near) if near else self.eval_every


def estimate_round_seconds(
    frame_seconds: Mapping[str, float], detection: Collection[str] = (), budget: RetrainBudget | None = None
) -> float:
    """Return about how long a round of joint retraining of these queries takes when it runs all its steps:
    ``budget.max_steps`` steps, each training every query on one batch (``batch_size`` frames, or
    ``detection_batch_size`` for the queries named in ``detection``) at its measured seconds per training frame
    (``frame_seconds``: what training its unmerged model took on this machine, per frame). In-round checks and
    the round's final measurement are not counted, so a real round takes somewhat longer.

    Returns:
        Seconds (0.0 for no queries).

    Raises:
        TrainingError: a per-frame time that is negative or not finite.
    """
    budget = budget or RetrainBudget()
    per_step = 0.0
    for name, seconds in frame_seconds.items():
        if not math.isfinite(seconds) or seconds < 0:
            raise TrainingError(f"{name}: seconds per training frame must be a number >= 0, got {seconds!r}")
        per_step += seconds * (budget.detection_batch_size if name in detection else budget.batch_size)
    return per_step * budget.max_steps


@dataclass(frozen=True)
class QueryPace:
    """What one query's share of a round of joint retraining costs on this machine, measured (``measure_pace``)."""

    # One training step on the query's batch.
    step_seconds: float
    # BatchNorm re-estimation, paid before every check and measurement.
    calibration_seconds: float
    # Evaluating one frame.
    frame_seconds: float

    def round_seconds(
        self, budget: RetrainBudget, *, check_frames: int, val_frames: int, test_frames: int, steps: int | None = None
    ) -> float:
        """Return about how long this query's share of a round takes when it runs ``steps`` steps (default: all
        ``budget.max_steps``): the steps, a check before the first step and every ``budget.eval_every`` steps,
        and the round's closing work (``closing_seconds``)."""
        steps = budget.max_steps if steps is None else min(steps, budget.max_steps)
        checks = 1 + math.ceil(steps / budget.eval_every)
        check = self.calibration_seconds + check_frames * self.frame_seconds
        return steps * self.step_seconds + checks * check + self.closing_seconds(
            val_frames=val_frames, test_frames=test_frames)

    def closing_seconds(self, *, val_frames: int, test_frames: int) -> float:
        """Return about how long the work after a round's last step takes for this query: the final measurement
        on the whole validation set, then measuring the accepted weights on validation and test frames."""
        return 2 * self.calibration_seconds + (2 * val_frames + test_frames) * self.frame_seconds


def measure_pace(model: nn.Module, query: QueryData, budget: RetrainBudget, *, probe_frames: int = 32) -> QueryPace:
    """Return what ``query``'s share of a round costs, timed on a copy of ``model`` (``model`` is left untouched):
    the second of two training steps (the first warms up), one batch of BatchNorm re-estimation scaled to a
    measurement's, and evaluation of ``probe_frames`` check frames scaled per frame. A few seconds even for a
    detector, against the minutes of a round, so a search can size its trials to the time it has left.

    Raises:
        TrainingError: a training step's loss is not finite.
    """
    probe = copy.deepcopy(model)
    device = next(probe.parameters()).device
    optimizer = torch.optim.AdamW(probe.parameters(), lr=budget.lr)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        probe.train()
        loss = _query_loss(probe, query, budget, generator, device)
        if not torch.isfinite(loss):
            raise TrainingError(f"{query.name}: loss {float(loss.detach())} while timing a training step")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    recalibrate_batchnorm(probe, query.train, query.task, batches=1)
    calibration = (time.perf_counter() - started) * CALIBRATION_BATCHES
    frames = query.check if query.check is not None else query.val
    picked = LabelledFrames(frames.images[:probe_frames], frames.targets[:probe_frames])
    started = time.perf_counter()
    measure(probe, picked, query.task, calibration=None, interval=False)
    return QueryPace(seconds[-1], calibration, (time.perf_counter() - started) / len(picked))


def check_subset(val: LabelledFrames, most: int) -> LabelledFrames | None:
    """Return ``most`` frames of ``val``, evenly spaced in time, or None when ``val`` has no more than that (the
    checks then read all of it)."""
    if len(val) <= most:
        return None
    picks = [round(i * (len(val) - 1) / (most - 1)) for i in range(most)] if most > 1 else [0]
    return LabelledFrames(val.images[picks], [val.targets[i] for i in picks])


@dataclass(eq=False)
class QueryData:
    """What retraining needs of one query: its task, frames, required accuracy and teacher outputs."""

    name: str
    task: Task
    train: LabelledFrames
    val: LabelledFrames
    # Accuracy the merged model must keep on ``val``.
    required: float
    # The unmerged model's logits on the training frames (classification), for distillation.
    teacher_logits: torch.Tensor | None = None
    # The frames of in-round checks (a subset of ``val``; None: all of ``val``).
    check: LabelledFrames | None = None
    # How the final measurement on ``val`` is judged (None: the point figure against ``required``).
    acceptance: TargetTest | None = None
    _images: torch.Tensor | None = field(default=None, repr=False)

    @property
    def target_test(self) -> TargetTest:
        """Return how the final measurement is judged: ``acceptance``, or the point figure against ``required``."""
        return self.acceptance or TargetTest(self.required)

    def images(self) -> torch.Tensor:
        """Return the training frames as a float tensor (built once)."""
        if self._images is None:
            self._images = images_to_tensor(self.train.images, "cpu")
        return self._images


@torch.no_grad()
def teacher_logits(model: nn.Module, frames: LabelledFrames, *, batch_size: int = 128) -> torch.Tensor:
    """Return a classifier's logits on ``frames`` (CPU tensor), the soft targets of distillation."""
    device = next(model.parameters()).device
    model.eval()
    chunks = []
    for start in range(0, len(frames), batch_size):
        batch = images_to_tensor(frames.images[start : start + batch_size], device)
        chunks.append(model(batch).float().cpu())
    return torch.cat(chunks)


@dataclass
class RetrainOutcome:
    """The result of one round of joint retraining."""

    # The final measurement on the whole validation set of each affected query: what decides ``met``.
    accuracies: dict[str, float]
    met: dict[str, bool]
    steps: int
    stopped: StopReason
    seconds: float
    # Check accuracy of each affected query right after tying, before any retraining step.
    initial_accuracies: dict[str, float] = field(default_factory=dict)
    # The last in-round check's accuracies (on the check frames).
    check_accuracies: dict[str, float] = field(default_factory=dict)
    # Seconds of the final measurements on the whole validation set (0 when the last check was final).
    closing_seconds: float = 0.0
    # Per affected query, the lower bound of its final margin above target at the acceptance confidence (the
    # margin itself for point-judged targets): ``met`` is ``lower_margins >= 0``.
    lower_margins: dict[str, float] = field(default_factory=dict)
    # Final measurements that did not show every target met although the checks had passed (the round went on).
    false_stops: int = 0
    # The queries whose trend over their latest checks could not reach their targets within the step budget: why
    # a round stopped as hopeless (empty for any other stop). The other queries below target were still on their
    # way when it stopped.
    hopeless: frozenset[str] = frozenset()

    @property
    def all_met(self) -> bool:
        """Return whether every affected query met its target."""
        return all(self.met.values())

    @property
    def failing(self) -> frozenset[str]:
        """Return the affected queries below target."""
        return frozenset(name for name, ok in self.met.items() if not ok)


def _evaluate(models: ModelSet, names: list[str], data: Mapping[str, QueryData]) -> dict[str, float]:
    accuracies = {}
    for name in names:
        query = data[name]
        frames = query.val if query.check is None else query.check
        accuracies[name] = measure(models[name], frames, query.task, calibration=query.train, interval=False).accuracy
    return accuracies


def _judge(models: ModelSet, names: list[str], data: Mapping[str, QueryData]) -> dict[str, tuple[float, float]]:
    """Return each query's final ``(accuracy, lower margin)`` on its whole validation set (``TargetTest.judge``)."""
    judged = {}
    for name in names:
        query = data[name]
        (predictions,) = measured_predictions(models[name], (query.val,), query.task, calibration=query.train)
        judged[name] = query.target_test.judge(predictions, query.val, query.task)
    return judged


def _query_loss(
    model: nn.Module, query: QueryData, budget: RetrainBudget, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    batch_size = budget.detection_batch_size if query.task.is_detection else budget.batch_size
    picks, images, targets = draw_batch(query.train, batch_size, generator, device, images=query.images())
    if query.task.is_detection or budget.distill == 0 or query.teacher_logits is None:
        return joint_step(model, (images, targets), query.task, generator=generator, augment=False)
    logits = model(images)
    labels = torch.tensor(targets, dtype=torch.int64, device=device)
    hard = nn.functional.cross_entropy(logits, labels)
    temperature = budget.temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(logits / temperature, dim=1),
        nn.functional.softmax(query.teacher_logits[picks].to(device) / temperature, dim=1),
        reduction="batchmean",
    )
    return hard + budget.distill * soft * temperature**2


def _shortfalls(accuracies: Mapping[str, float], affected: list[str], bars: Mapping[str, float]) -> list[float]:
    return [bars[n] - accuracies[n] for n in affected if accuracies[n] < bars[n]]


# How many of a query's latest checks its trend is fitted to: one check's figure on a subset of validation frames
# moves by a few frames' worth either way, so a trend drawn through two checks is mostly noise.
TREND_CHECKS = 3


def projected_accuracy(history: Sequence[tuple[int, float]], max_steps: int) -> float | None:
    """Return where a query's accuracy is heading by step ``max_steps``: the least-squares line through its latest
    ``TREND_CHECKS`` checks (``(steps, accuracy)`` pairs, oldest first), read at the latest check and carried on
    at its slope when that is rising (a falling trend is projected flat: more steps may yet turn it).

    Returns:
        The projected accuracy, or None with fewer than two checks (no trend yet).
    """
    recent = list(history[-TREND_CHECKS:])
    if len(recent) < 2:
        return None
    mean_steps = sum(s for s, _ in recent) / len(recent)
    mean_accuracy = sum(a for _, a in recent) / len(recent)
    spread = sum((s - mean_steps) ** 2 for s, _ in recent)
    slope = sum((s - mean_steps) * (a - mean_accuracy) for s, a in recent) / spread if spread else 0.0
    latest = recent[-1][0]
    fitted = mean_accuracy + slope * (latest - mean_steps)
    return fitted + max(slope, 0.0) * max(0, max_steps - latest)


def _hopeless_queries(
    history: list[tuple[int, dict[str, float]]], affected: list[str], bars: Mapping[str, float], max_steps: int
) -> frozenset[str]:
    latest = history[-1][1]
    found = set()
    for name in affected:
        if latest[name] >= bars[name]:
            continue
        projected = projected_accuracy([(steps, checked[name]) for steps, checked in history], max_steps)
        if projected is not None and projected < bars[name]:
            found.add(name)
    return frozenset(found)


def joint_retrain(
    models: ModelSet,
    affected: list[str],
    data: Mapping[str, QueryData],
    budget: RetrainBudget,
    *,
    seed: int = 0,
    cancel: CancelToken | None = None,
    deadline: float | None = None,
    on_check: Callable[[int, dict[str, float]], None] | None = None,
) -> RetrainOutcome:
    """Retrain the ``affected`` models of ``models`` together until they meet their targets or stop.

    ``deadline`` is a ``time.monotonic()`` value after which the round stops at the next step (the search's
    budget): a check due after it is not run, so the round ends within one step of it. ``on_check(steps,
    accuracies)`` hears every in-round check (progress). ``budget.max_seconds`` bounds the round itself. Checks
    come sooner once every lagging query is
    near its target, so a round ends soon after the targets are met. A round that stops for any reason but
    cancellation or the deadline ends with one measurement of every affected query on its whole validation
    set, judged by its ``target_test``, and that alone decides ``met``. When the checks had passed but that
    judgement does not, and steps are left, the round goes on with the overrated queries' check bars raised by
    their shortfall (``false_stops`` counts these).

    Returns:
        Final validation accuracies, which queries met their targets, steps taken and why the round stopped.

    Raises:
        TrainingError: the joint loss became NaN or infinite.
    """
    started = time.perf_counter()
    unique = ModelSet({name: models[name] for name in affected})
    device = next(unique.parameters()).device
    optimizer = torch.optim.AdamW(unique.parameters(), lr=budget.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    # What each query's check must reach: its target, raised after a final measurement the checks overrated.
    bars = {n: data[n].required for n in affected}
    accuracies = _evaluate(models, affected, data)
    checked_at = 0
    initial = dict(accuracies)
    history: list[tuple[int, dict[str, float]]] = [(0, accuracies)]
    hopeless: frozenset[str] = frozenset()
    steps = 0
    closing = 0.0
    false_stops = 0
    round_ends = None if budget.max_seconds is None else time.monotonic() + budget.max_seconds
    while True:
        stopped: StopReason = "budget"
        next_validation = budget.interval(_shortfalls(accuracies, affected, bars))
        while not all(accuracies[n] >= bars[n] for n in affected):
            if steps >= budget.max_steps or (round_ends is not None and time.monotonic() >= round_ends):
                stopped = "budget"
                break
            if cancel is not None and cancel.cancelled:
                stopped = "cancelled"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "deadline"
                break
            unique.train()
            loss = sum(
                (1.0 + budget.lag_weight * max(0.0, bars[n] - accuracies[n]))
                * _query_loss(models[n], data[n], budget, generator, device)
                for n in affected
            )
            if not torch.isfinite(loss):
                raise TrainingError(f"joint loss became {float(loss.detach())} at step {steps}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            steps += 1
            next_validation -= 1
            if next_validation == 0 or steps == budget.max_steps:
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "deadline"
                    break
                accuracies = _evaluate(models, affected, data)
                checked_at = steps
                if on_check is not None:
                    on_check(steps, dict(accuracies))
                next_validation = budget.interval(_shortfalls(accuracies, affected, bars))
                history.append((steps, accuracies))
                if steps >= budget.hopeless_after * budget.max_steps:
                    hopeless = _hopeless_queries(history, affected, bars, budget.max_steps)
                    if hopeless:
                        stopped = "hopeless"
                        break
        else:
            stopped = "met"
        unique.eval()
        checked = accuracies
        closing_started = time.perf_counter()
        point_judged = all(data[n].check is None and data[n].acceptance is None for n in affected)
        if stopped in ("cancelled", "deadline") or (checked_at == steps and point_judged):
            judged = {n: (checked[n], checked[n] - data[n].required) for n in affected}
        else:
            judged = _judge(models, affected, data)
        closing += time.perf_counter() - closing_started
        overrated = [n for n in affected if judged[n][1] < 0]
        if stopped != "met" or not overrated or steps >= budget.max_steps:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        false_stops += 1
        for name in overrated:
            bars[name] = max(bars[name], checked[name] - judged[name][1])
    final = {n: judged[n][0] for n in affected}
    lower = {n: judged[n][1] for n in affected}
    met = {n: lower[n] >= 0 for n in affected}
    ended = time.perf_counter()
    return RetrainOutcome(
        final, met, steps, stopped, ended - started, initial, dict(checked), closing_seconds=closing,
        lower_margins=lower, false_stops=false_stops, hopeless=hopeless,
    )


__all__ = [
    "QueryData",
    "QueryPace",
    "RetrainBudget",
    "RetrainOutcome",
    "check_subset",
    "joint_retrain",
    "measure_pace",
    "projected_accuracy",
    "teacher_logits",
]
