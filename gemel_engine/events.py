"""Progress events: plain JSON-serialisable dicts with a ``type`` such as ``round.finished``.

The engine reports through a ``progress(event)`` callable and never imports Celery or Channels; callers
turn events into task states, database rows or websocket messages. Callbacks observe, never steer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Progress = Callable[[Event], None]

# Every event type the engine emits (``make_event`` refuses any other).
EVENT_TYPES = (
    # Before the first round: loading the models, reading and labelling frames, measuring the unmerged models
    # (``stage``: what is being done; ``done`` of ``total`` when it is counted, else None).
    "search.preparing",
    "search.started",
    "round.started",
    # A trial of which nothing would finish in the budget's time left (``estimated_seconds`` against
    # ``seconds_left``): it moves to the back of the queue.
    "trial.skipped",
    "round.progress",
    "round.cut",
    "round.finished",
    "config.accepted",
    "search.finished",
    "search.failed",
    "search.cancelled",
    # Training (gemel_engine.train) reports each step and each validation.
    "train.step",
    "train.validated",
    # A demo build (gemel_engine.demo) reports, per query, a model kept from an earlier build or its training;
    # ``demo.trained`` carries the trained query entry (``entry``, as ``QueryEntry.to_json`` writes it).
    "demo.kept",
    "demo.training",
    "demo.step",
    "demo.trained",
)


# Event fields that hold a path on the machine that ran the search (a caller storing events elsewhere rewrites
# them); ``result.bundle`` of ``search.finished`` is one too.
PATH_FIELDS = ("bundle", "out_dir")


def make_event(event_type: str, **fields: Any) -> Event:
    """Return an event dict of ``event_type`` with ``fields`` and a wall-clock ``at`` timestamp.

    Raises:
        ValueError: an unknown event type, or fields that are not JSON-serialisable.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = {"type": event_type, "at": time.time(), **fields}
    json.dumps(event)
    return event


def emit(progress: Progress | None, event_type: str, **fields: Any) -> Event:
    """Build an event and pass it to ``progress`` (if any); return the event."""
    event = make_event(event_type, **fields)
    if progress is not None:
        progress(event)
    return event


class CancelToken:
    """A flag a caller sets to stop a search at its next safe point (between training steps)."""

    def __init__(self, check: Callable[[], bool] | None = None) -> None:
        self._set = False
        self._check = check

    def cancel(self) -> None:
        """Ask the search to stop."""
        self._set = True

    @property
    def cancelled(self) -> bool:
        """Return whether cancellation was asked for (by ``cancel`` or the ``check`` callable)."""
        if not self._set and self._check is not None and self._check():
            self._set = True
        return self._set
