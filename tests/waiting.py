"""Waiting for a condition with a deadline: the one way tests wait, so no sleep decides an outcome.

A test states what it waits for; the deadline only stops a wait that would otherwise hang, so it is generous
and never an assertion about speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    every: float = 0.1,
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Raises AssertionError naming ``what`` (and, when given, what ``context()`` says: a log tail, a status)
    when ``timeout`` seconds pass first. The condition is checked once more at the deadline, so a slow machine
    that reaches it just then still passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = condition()
            if value:
                return value
            detail = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(every)
