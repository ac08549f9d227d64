"""Shared fixtures: tiny models built once per session, and a GPU marker that skips cleanly without one."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
import torch
from torch import nn

from tests.time_limits import (  # noqa: F401 - hooks: a hang explains itself, fixtures get own bounds
    SESSION_BUILD_LIMIT_S,
    own_time_limit,
    pytest_runtest_protocol,
    pytest_timeout_set_timer,
)

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


@pytest.fixture(scope="session")
def tiny_workload(tmp_path_factory):
    """Build the ``tiny`` demo workload once per session (trains three small models on the CPU)."""
    from gemel_engine.demo import build_demo

    with own_time_limit(SESSION_BUILD_LIMIT_S):
        return build_demo("tiny", tmp_path_factory.mktemp("tiny-demo"))


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
