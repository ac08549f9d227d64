"""Shared fixtures: tiny models built once per session, and a GPU marker that skips cleanly without one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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

    return build_demo("tiny", tmp_path_factory.mktemp("tiny-demo"))
