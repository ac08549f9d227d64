"""Time limits for tests: a hang fails fast and explains itself; slow session fixtures get a bound of their own.

pytest-timeout fails a test whose setup, call and teardown together outlast its limit (``timeout`` in
pyproject.toml, or a ``timeout`` marker). Shortly before that, a watchdog thread of this plugin prints the
test's name, every thread's stack and every unfinished asyncio task of every running event loop, with the
coroutine stack each task is suspended in. A session fixture that builds something slow once (a demo
workload, the live stack) runs under ``own_time_limit`` instead, so it does not count against the first test
that happens to use it. Loaded by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest

# Seconds before the time limit at which the report is printed.
REPORT_AHEAD_S = 5.0
# Seconds a session fixture's one-off build (a demo workload, the live stack) may take, apart from any test.
SESSION_BUILD_LIMIT_S = 1200.0


def test_time_limit(item: pytest.Item) -> float:
    """Return the seconds pytest-timeout gives ``item`` (its ``timeout`` marker, else --timeout or the ini)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if value is not None:
            return float(value)
    option = item.config.getoption("timeout", None)
    if option is not None:
        return float(option)
    return float(item.config.getini("timeout") or 0)


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """Return every event loop of this process that is running now, in any thread."""
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def unfinished_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    """Return the tasks of ``loop`` that have not finished (read from another thread: retried if it changes)."""
    for _ in range(5):
        try:
            return [task for task in asyncio.all_tasks(loop) if not task.done()]
        except RuntimeError:  # the set changed while we read it
            continue
    return []


def awaited_frames(task: asyncio.Task) -> list[str]:
    """Return ``file:line in function`` for each coroutine ``task`` is suspended in, outermost first."""
    lines = []
    awaitable = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) or getattr(
            awaitable, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaitable = (getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
                     or getattr(awaitable, "ag_await", None))
        if awaitable is not None and not hasattr(awaitable, "cr_frame") and not hasattr(awaitable, "gi_frame") \
                and not hasattr(awaitable, "ag_frame"):
            lines.append(f"  awaiting {awaitable!r}")
            break
    return lines


def write_hang_report(nodeid: str, out: TextIO) -> None:
    """Write every thread's stack and every unfinished asyncio task with its coroutine stack to ``out``."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    out.write(f"\n{'=' * 30} hang report: {nodeid} {'=' * 30}\n")
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, '?')} ({ident})\n")
        out.write("".join(traceback.format_stack(frame)))
    for loop in running_loops():
        tasks = unfinished_tasks(loop)
        out.write(f"--- event loop {loop!r}: {len(tasks)} unfinished task(s)\n")
        for task in tasks:
            out.write(f"{task!r}\n")
            out.write("\n".join(awaited_frames(task)) + "\n")
    out.write(f"{'=' * 30} end of hang report {'=' * 30}\n")
    out.flush()


class _Watchdog:
    """The hang-report timer of the test now running (one test runs at a time in a pytest process)."""

    item: pytest.Item | None = None
    timer: threading.Timer | None = None

    @classmethod
    def arm(cls, item: pytest.Item, seconds: float) -> None:
        cls.disarm()
        cls.item = item
        if seconds > REPORT_AHEAD_S:
            cls.timer = threading.Timer(seconds - REPORT_AHEAD_S, write_hang_report, args=(item.nodeid, sys.stderr))
            cls.timer.daemon = True
            cls.timer.name = "hang-report"
            cls.timer.start()

    @classmethod
    def disarm(cls) -> None:
        if cls.timer is not None:
            cls.timer.cancel()
        cls.timer = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Arm the watchdog for ``item``'s setup, call and teardown."""
    _Watchdog.arm(item, test_time_limit(item))
    try:
        yield
    finally:
        _Watchdog.disarm()
        _Watchdog.item = None


def _restart_limits(item: pytest.Item, seconds: float) -> None:
    hook = item.config.hook
    hook.pytest_timeout_cancel_timer(item=item)
    settings = getattr(item, "_gemel_timeout_settings", None)
    if settings is not None and seconds > 0:
        hook.pytest_timeout_set_timer(item=item, settings=settings._replace(timeout=seconds))
    _Watchdog.arm(item, seconds)


@contextmanager
def own_time_limit(seconds: float) -> Iterator[None]:
    """Run the body under a limit of ``seconds`` instead of the running test's; then restart the test's own.

    For session fixtures that build something slow once: the build gets its own bound, and the test that
    happened to trigger it still gets its whole limit afterwards. Outside a test it only runs the body.
    """
    item = _Watchdog.item
    if item is None:
        yield
        return
    _restart_limits(item, seconds)
    try:
        yield
    finally:
        _restart_limits(item, test_time_limit(item))


@pytest.hookimpl(hookwrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> Iterator[None]:
    """Remember the settings pytest-timeout armed ``item`` with, so ``own_time_limit`` can re-arm them."""
    item._gemel_timeout_settings = settings  # type: ignore[attr-defined]
    yield
