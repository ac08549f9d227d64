"""Shared fixtures: tiny models built once per session, and a GPU marker that skips cleanly without one."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import pytest
import pytest_asyncio
import torch
from torch import nn

from gemel_engine.demo import WORKLOAD_NAME
from gemel_engine.workload import Workload
from tests.time_limits import (  # noqa: F401 - hooks: a hang explains itself, fixtures get own bounds
    SESSION_BUILD_LIMIT_S,
    own_time_limit,
    pytest_runtest_protocol,
    pytest_timeout_set_timer,
)
from tests.waiting import wait_until
from webapp.stack import ManagedProcess

# The fixture that builds the tiny demo; the build starts in the background when any collected test uses it.
TINY_WORKLOAD = "tiny_workload"

# Seconds an async test's leftover tasks get to finish before the test fails for leaving them running.
LEFTOVER_TASKS_DEADLINE_S = 30.0

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


class TinyNet(nn.Module):
    """A small conv net with the layer kinds Gemel cares about (conv, batch norm, linear)."""

    def __init__(self, num_classes: int = 3, width: int = 8, stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width, 3, stride=stride, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.stem(x)))
        x = torch.relu(self.body(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny_net_factory():
    """Return a factory of TinyNet models with deterministic weights per seed."""

    def make(seed: int = 0, **kwargs: int) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(**kwargs).eval()

    return make


@pytest.fixture(scope="session", autouse=True)
def _tiny_demo_build(request, tmp_path_factory) -> Iterator[ManagedProcess | None]:
    """Start building the ``tiny`` demo in a child process as the session starts, when any test will need it.

    pytest-django runs the web tests first; they keep about one core busy, so the build trains its three models
    on the other one meanwhile instead of holding up the engine tests that use it. The child is stopped at the
    end of the session if it is still running.
    """
    if not any(TINY_WORKLOAD in item.fixturenames for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("tiny-demo")
    command = [sys.executable, "-m", "gemel_engine", "demo", "build", "--scale", "tiny", "--out", str(out)]
    build = ManagedProcess("tiny demo build", command, dict(os.environ), out / "build.log").start()
    try:
        yield build
    finally:
        build.stop()


@pytest.fixture(scope="session")
def tiny_workload(_tiny_demo_build: ManagedProcess | None):
    """The ``tiny`` demo workload (three small models trained on the CPU), built once per session."""
    build = _tiny_demo_build
    assert build is not None and build.process is not None, "the tiny demo build was not started"
    with own_time_limit(SESSION_BUILD_LIMIT_S):
        wait_until(lambda: not build.running, timeout=SESSION_BUILD_LIMIT_S - 30, what="the tiny demo build",
                   every=0.5, context=build.log_tail)
    if build.process.returncode != 0:
        raise RuntimeError(f"the tiny demo build failed (exit {build.process.returncode}):\n{build.log_tail()}")
    out = build.log_path.parent
    return Workload.load(out / WORKLOAD_NAME)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every asyncio test is checked for tasks it leaves running (see ``_nothing_left_running``)."""
    for item in items:
        if item.get_closest_marker("asyncio") is not None:
            item.fixturenames.insert(0, "_nothing_left_running")


@pytest_asyncio.fixture
async def _nothing_left_running():
    """Fail an async test that leaves tasks running on its loop (an undisconnected consumer, a stray receive).

    Tasks that are just finishing get a deadline; one still pending then would hang the loop's close.
    """
    yield
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if leftover:
        _, pending = await asyncio.wait(leftover, timeout=LEFTOVER_TASKS_DEADLINE_S)
        assert not pending, f"the test left {len(pending)} task(s) running: {sorted(map(repr, pending))}"
