"""Scheduling camera frames onto the executor: time-sharing, space-sharing and merged, behind one loop.

Each camera delivers frames at its fps; every query on the camera gets each frame with a deadline of
arrival + SLO. The loop runs one batch at a time on the one device:

1. frames that cannot finish before their deadline even alone on a resident model are dropped (stale frames
   are skipped rather than run late);
2. the scheduler picks a query among those with frames waiting (on equal deadlines, as when cameras deliver at
   the same instants, the one served least recently); when loading what its model lacks would make
   even its oldest frame late, the loop only loads the model (charged to the clock) and goes round again, so a
   query whose cold load is longer than its SLO still gets its model resident instead of starving;
3. the batch is the query's oldest waiting frames, as many (up to its ``max_batch``) as can all finish
   before the oldest one's deadline;
4. the executor runs it (loading what is missing, evicting by its policy); a result ready after its
   frame's deadline also counts as a drop. A dropped frame reuses the query's last result.

Schedulers (a registry that refuses duplicates):

- ``time-sharing``: the unmerged models, swapped as needed, earliest deadline first (the baseline);
- ``space-sharing``: every model resident and pinned (refused when they do not all fit);
- ``merged``: the merged models; shared layers loaded first and evicted last; queries ordered by
  deadline plus what they would have to load, so what is resident gets reused.

The pick policy and the models are separate choices, so a comparison can hold one fixed: ``time-sharing``
and ``merged-edf`` pick earliest deadline first; ``time-sharing-load-aware`` and ``merged`` pick by deadline
plus load time. Whatever a scheduler loads before the first frame is charged to the clock (see
``Executor.preload``), so no scheduler starts warm for free.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gemel_engine.errors import RuntimeBudgetError, RuntimeConfigError
from gemel_engine.queries import Target, Task
from gemel_engine.registry import Registry
from gemel_engine.runtime.executor import Executor
from gemel_engine.runtime.metrics import RuntimeMetrics

DEFAULT_MAX_BATCH = 4


@dataclass(frozen=True)
class RuntimeQuery:
    """A query as the runtime schedules it."""

    # Query name (metrics are keyed by it).
    name: str
    # Model that serves it, by name in the executor.
    model: str
    task: Task
    # Camera whose frames it gets.
    camera: str
    # Latency bound from a frame's arrival to its result, in seconds.
    slo_seconds: float
    # Most frames run in one batch.
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if not self.slo_seconds > 0:
            raise RuntimeConfigError(f"query {self.name!r}: the SLO must be positive, got {self.slo_seconds!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise RuntimeConfigError(f"query {self.name!r}: max_batch must be a positive integer")


@dataclass(frozen=True, eq=False)
class CameraFrame:
    """One frame as delivered by a camera to the runtime."""

    camera: str
    # Position in the camera's stream.
    index: int
    # Clock time (seconds) at which the frame arrived.
    arrival: float
    # H×W×3 uint8 RGB pixels at the models' input size.
    image: np.ndarray
    # Ground-truth boxes, or None when the camera has no labels.
    boxes: tuple[Any, ...] | None = None


@dataclass(eq=False)
class _Waiting:
    frame: CameraFrame
    deadline: float
    target: Target | None


class Scheduler(ABC):
    """Sets up residency before serving and picks which query runs next."""

    name: ClassVar[str]
    # True when the scheduler runs merged models (a bundle), False for the unmerged ones.
    merged: ClassVar[bool]
    # True when shared units are evicted only after every unshared one.
    keep_shared: ClassVar[bool] = False

    def prepare(self, executor: Executor) -> None:  # noqa: B027 - swapping on demand needs no set-up
        """Load what must be resident before the first frame.

        Raises:
            RuntimeBudgetError: the scheduler's resident set does not fit the budget.
        """

    @abstractmethod
    def pick(self, candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
        """Return the query to run next among ``(query, oldest waiting deadline)`` pairs, listed least recently
        served first (so a policy that keeps the first of equals never starves a query on ties)."""


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler")
register_scheduler = SCHEDULERS.register


def get_scheduler(name: str) -> Scheduler:
    """Return a new instance of scheduler ``name``.

    Raises:
        RuntimeConfigError: no such scheduler; the message lists the known ones.
    """
    return SCHEDULERS.create(name)


def list_schedulers() -> list[str]:
    """Return the registered scheduler names, sorted."""
    return sorted(SCHEDULERS.names())


def pick_earliest_deadline(candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
    """Return the query whose oldest frame is due first (on a tie, the earliest candidate: the loop lists them
    least recently served first)."""
    return min(candidates, key=lambda item: item[1])[0]


@register_scheduler
class TimeSharing(Scheduler):
    """Unmerged models swapped in and out as needed, earliest deadline first."""

    name = "time-sharing"
    merged = False

    def pick(self, candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
        """Return the query whose oldest frame is due first."""
        return pick_earliest_deadline(candidates, executor)


@register_scheduler
class SpaceSharing(TimeSharing):
    """Every model resident at once; refused when they do not all fit."""

    name = "space-sharing"
    merged = False

    def prepare(self, executor: Executor) -> None:
        """Load and pin every model.

        Raises:
            RuntimeBudgetError: the models' weights exceed the budget.
        """
        need, room = executor.total_bytes(), executor.swap.budget.weight_bytes
        if need > room:
            raise RuntimeBudgetError(
                f"space-sharing needs all {need} bytes of weights resident; the budget leaves {room}"
            )
        executor.preload(pin=True)


def pick_load_aware(candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
    """Return the query with the earliest deadline once the time to load what it lacks is added to it (on a tie,
    the earliest candidate: the loop lists them least recently served first)."""

    def key(item: tuple[RuntimeQuery, float]) -> float:
        query, deadline = item
        return deadline + executor.bandwidth.seconds(executor.missing_bytes(query.model))

    return min(candidates, key=key)[0]


@register_scheduler
class TimeSharingLoadAware(TimeSharing):
    """Unmerged models swapped as needed, picked by deadline plus load time (the merged scheduler's policy)."""

    name = "time-sharing-load-aware"

    def pick(self, candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
        """Return the query whose deadline plus load time comes first."""
        return pick_load_aware(candidates, executor)


@register_scheduler
class MergedScheduling(Scheduler):
    """Merged models: shared layers resident first, queries ordered to reuse what is loaded."""

    name = "merged"
    merged = True
    keep_shared = True

    def prepare(self, executor: Executor) -> None:
        """Load the shared units that fit (they are then evicted only after every unshared unit)."""
        executor.preload(shared_only=True)

    def pick(self, candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
        """Return the query with the earliest deadline once what it must load is added to it."""
        return pick_load_aware(candidates, executor)


@register_scheduler
class MergedEarliestDeadline(MergedScheduling):
    """Merged models, shared layers resident first, picked earliest deadline first (time-sharing's policy)."""

    name = "merged-edf"

    def pick(self, candidates: Sequence[tuple[RuntimeQuery, float]], executor: Executor) -> RuntimeQuery:
        """Return the query whose oldest frame is due first."""
        return pick_earliest_deadline(candidates, executor)


class ScheduleLoop:
    """Frames in, batches run, metrics out. ``offer`` may be called from other threads than ``step``."""

    def __init__(
        self,
        executor: Executor,
        queries: Sequence[RuntimeQuery],
        scheduler: Scheduler | str,
        metrics: RuntimeMetrics,
    ) -> None:
        self.executor = executor
        self.queries = {query.name: query for query in queries}
        self.scheduler = get_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.metrics = metrics
        missing = sorted({q.model for q in queries} - set(executor.models))
        if missing:
            raise RuntimeConfigError(f"queries name models the executor does not hold: {missing}")
        self._waiting: dict[str, deque[_Waiting]] = {name: deque() for name in self.queries}
        self._lock = threading.Lock()
        self.batches = 0
        # Times the loop loaded a model without running it (its oldest frame would have been late anyway).
        self.loads_only = 0
        # The batch count when each query last ran: cameras often deliver at the same instants, and ties in
        # deadline go to the query served least recently, not always to the same one.
        self._last_served: dict[str, int] = {}

    @property
    def clock(self) -> Any:
        """Return the executor's clock."""
        return self.executor.clock

    def offer(self, frame: CameraFrame) -> None:
        """Queue ``frame`` for every query on its camera."""
        with self._lock:
            for query in self.queries.values():
                if query.camera == frame.camera:
                    target = None if frame.boxes is None else query.task.target(frame.boxes)
                    self._waiting[query.name].append(_Waiting(frame, frame.arrival + query.slo_seconds, target))

    def has_waiting(self) -> bool:
        """Return whether any frame waits."""
        with self._lock:
            return any(self._waiting.values())

    def _served_order(self, name: str) -> tuple[int, str]:
        return self._last_served.get(name, 0), name

    def _drop_infeasible(self, now: float) -> bool:
        dropped = False
        for name, waiting in self._waiting.items():
            if not waiting:
                continue
            alone = self.executor.estimate(self.queries[name].model, 1, loads=False)
            while waiting and now + alone > waiting[0].deadline:
                self.metrics[name].dropped(waiting.popleft().target)
                dropped = True
        return dropped

    def _batch(self, query: RuntimeQuery, now: float) -> list[_Waiting]:
        waiting = self._waiting[query.name]
        size = min(query.max_batch, len(waiting))
        while size > 1 and now + self.executor.estimate(query.model, size) > waiting[0].deadline:
            size -= 1
        return [waiting.popleft() for _ in range(size)]

    def step(self) -> bool:
        """Drop what cannot make its deadline, then run one batch; return whether anything happened."""
        now = self.clock.now()
        with self._lock:
            dropped = self._drop_infeasible(now)
            waiting = sorted((name for name, w in self._waiting.items() if w), key=self._served_order)
            candidates = [(self.queries[name], self._waiting[name][0].deadline) for name in waiting]
            if not candidates:
                return dropped
            query = self.scheduler.pick(candidates, self.executor)
            loads_first = now + self.executor.estimate(query.model, 1) > self._waiting[query.name][0].deadline
            batch = [] if loads_first else self._batch(query, now)
        if loads_first:
            self.executor.load(query.model)
            self.loads_only += 1
            return True
        predictions = self.executor.run(query.model, [item.frame for item in batch], query.task)
        done = self.clock.now()
        self.batches += 1
        self._last_served[query.name] = self.batches
        for item, prediction in zip(batch, predictions, strict=True):
            if done <= item.deadline:
                self.metrics[query.name].processed(
                    prediction, item.target, latency=done - item.frame.arrival, at=done
                )
            else:
                self.metrics[query.name].dropped(item.target)
        return True


def run_frames(loop: ScheduleLoop, frames: Iterable[CameraFrame]) -> float:
    """Serve ``frames`` (sorted by arrival) on the loop's clock until every frame is processed or dropped.

    Returns:
        The clock time when the last frame was settled.
    """
    upcoming = deque(sorted(frames, key=lambda frame: (frame.arrival, frame.camera)))
    clock = loop.clock
    while True:
        while upcoming and upcoming[0].arrival <= clock.now():
            loop.offer(upcoming.popleft())
        if loop.step():
            continue
        if not upcoming and not loop.has_waiting():
            return clock.now()
        if upcoming:
            clock.wait_until(upcoming[0].arrival)


def stack_images(frames: Sequence[CameraFrame]) -> np.ndarray:
    """Return the frames' images as one N×H×W×3 array."""
    return np.stack([frame.image for frame in frames])
