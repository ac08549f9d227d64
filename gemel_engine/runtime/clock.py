"""Clocks for the runtime: a real one for serving, a virtual one so schedules are testable and repeatable.

The runtime charges every piece of work to its clock with ``account(modelled, elapsed)``: ``modelled`` is
the time the work takes on the device being served (measured, or simulated for CPU transfers), and
``elapsed`` the wall time that already passed while doing it here. A real clock sleeps off the
difference; a virtual clock advances by the modelled time alone. Both then agree on what "now" is.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod

from gemel_engine.errors import RuntimeConfigError


def _check_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise RuntimeConfigError(f"{what} must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


class Clock(ABC):
    """Seconds since the clock started; work is charged to it with ``account``."""

    # True when the clock's time is not wall time (a virtual clock).
    virtual: bool = False

    @abstractmethod
    def now(self) -> float:
        """Return the seconds since the clock started."""

    @abstractmethod
    def account(self, modelled: float, elapsed: float = 0.0) -> None:
        """Charge work that takes ``modelled`` seconds, of which ``elapsed`` already passed in wall time.

        Raises:
            RuntimeConfigError: a negative or non-finite number of seconds.
        """

    @abstractmethod
    def wait_until(self, at: float, stop: threading.Event | None = None) -> None:
        """Return once the clock reads at least ``at`` (or, on a real clock, once ``stop`` is set)."""


class RealClock(Clock):
    """Wall time (monotonic); charging work sleeps off what the modelled time adds to the elapsed time."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        """Return the wall seconds since the clock was made."""
        return time.monotonic() - self._start

    def account(self, modelled: float, elapsed: float = 0.0) -> None:
        """Sleep for ``modelled - elapsed`` seconds when positive.

        Raises:
            RuntimeConfigError: a negative or non-finite number of seconds.
        """
        extra = _check_seconds(modelled, "modelled time") - _check_seconds(elapsed, "elapsed time")
        if extra > 0:
            time.sleep(extra)

    def wait_until(self, at: float, stop: threading.Event | None = None) -> None:
        """Sleep until the clock reads ``at``, waking early when ``stop`` is set."""
        delay = at - self.now()
        if delay <= 0:
            return
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)


class VirtualClock(Clock):
    """Time that moves only when work is charged or the caller waits: deterministic schedules."""

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._now = _check_seconds(start, "start time")

    def now(self) -> float:
        """Return the virtual seconds."""
        return self._now

    def account(self, modelled: float, elapsed: float = 0.0) -> None:
        """Advance by ``modelled`` seconds (the elapsed wall time is ignored).

        Raises:
            RuntimeConfigError: a negative or non-finite number of seconds.
        """
        _check_seconds(elapsed, "elapsed time")
        self._now += _check_seconds(modelled, "modelled time")

    def wait_until(self, at: float, stop: threading.Event | None = None) -> None:
        """Jump forward to ``at`` (never backwards)."""
        self._now = max(self._now, float(at))
