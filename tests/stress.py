"""A pytest plugin for stress runs (``make test-stress``): every test several times, in a shuffled order, in one
process, while another process keeps every core busy.

Load it with ``-p tests.stress``. Options: ``--stress-rounds N`` runs each test N times; ``--stress-seed S``
fixes the shuffle (the seed is printed in the header, so a failing order can be replayed); ``--stress-load``
starts the busy process for the session. Tests keep pytest-django's grouping (plain database tests before
transactional ones), shuffled within each group.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

# One process that keeps every core busy: torch's matrix products use all the threads it is given.
_BUSY_LOOP = (
    "import torch\n"
    "torch.set_num_threads({threads})\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stress", "repeated, shuffled runs under load")
    group.addoption("--stress-rounds", type=int, default=1, help="run each test this many times")
    group.addoption("--stress-seed", type=int, default=None, help="seed of the shuffle (default: random)")
    group.addoption("--stress-load", action="store_true", help="keep every core busy in another process")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("stress_seed") is None:
        config.option.stress_seed = random.SystemRandom().randrange(2**31)
    config._stress_load = None  # type: ignore[attr-defined]
    if config.getoption("stress_load"):
        threads = os.cpu_count() or 1
        config._stress_load = subprocess.Popen(  # type: ignore[attr-defined]
            [sys.executable, "-c", _BUSY_LOOP.format(threads=threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    load = getattr(config, "_stress_load", None)
    if load is not None:
        load.kill()
        load.wait()


def pytest_report_header(config: pytest.Config) -> str:
    load = "with every core kept busy" if config.getoption("stress_load") else "without extra load"
    return (f"stress: {config.getoption('stress_rounds')} round(s), shuffled with --stress-seed "
            f"{config.getoption('stress_seed')}, {load}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    rounds = metafunc.config.getoption("stress_rounds")
    if rounds > 1:
        metafunc.fixturenames.append("stress_round")
        metafunc.parametrize("stress_round", range(rounds), ids=[f"round{n}" for n in range(rounds)])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Shuffle before pytest-django groups the tests (its sort is stable, so the shuffle survives in groups)."""
    random.Random(config.getoption("stress_seed")).shuffle(items)  # noqa: S311 - an order, not a secret
