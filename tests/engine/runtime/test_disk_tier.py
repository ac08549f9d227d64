from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gemel_engine.bundle import load_bundle
from gemel_engine.errors import RuntimeConfigError
from gemel_engine.queries import Task, predict
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.disk import calibrate_disk_tier, fit_bandwidth
from gemel_engine.runtime.executor import Executor, untie
from gemel_engine.runtime.swap import BandwidthModel, pipelined_seconds, unit_tensors

PRESENCE = Task("presence", ("car", "bus", "truck"))


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_the_disk_tier_reads_every_load_from_disk_after_dropping_the_page_cache(
    small_bundle: Path, monkeypatch: pytest.MonkeyPatch
):
    models = untie(load_bundle(small_bundle).models)
    images = _images(2)
    expected = {name: predict(model, images, PRESENCE, batch_size=2) for name, model in models.items()}
    dropped: list[tuple[int, int, int]] = []
    real_fadvise = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        dropped.append((offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    clock = VirtualClock()
    largest = max(sum(t.numel() * t.element_size() for t in m.state_dict().values()) for m in models.values())
    # One byte a second: had the tier charged the bandwidth model, one load would cost days.
    executor = Executor(copy.deepcopy(models), budget=MemoryBudget(largest + 1000), device="cpu", clock=clock,
                        tier="disk", bandwidth=BandwidthModel(1.0))
    try:
        path = executor.swap.mover.path
        assert executor.tier == "disk" and not executor.simulated and path.is_file()
        held = {key: unit_tensors(executor._module(unit)) for key, unit in executor.units.items()}
        assert all(t.numel() == 0 for tensors in held.values() for t in tensors)  # nothing resident: memory freed
        for name in ("a", "b"):
            dropped.clear()
            before, started = clock.now(), time.perf_counter()
            inference = executor.infer(name, images, PRESENCE)
            wall = time.perf_counter() - started
            assert inference.predictions == expected[name]  # the weights read back are the model's own
            units = list(executor.order[name])
            assert inference.loaded_bytes == sum(executor.units[key].nbytes for key in units)
            # Every tensor of every unit loaded had its pages dropped before the read.
            tensors = sum(len(held[key]) for key in units)
            assert len(dropped) == tensors and {advice for *_, advice in dropped} == {os.POSIX_FADV_DONTNEED}
            assert all(0 < offset < path.stat().st_size for offset, _, _ in dropped)
            # The clock was charged the measured time: the reads plus the pass, and no more than the wall time.
            assert 0 < inference.transfer_seconds <= clock.now() - before <= wall
        # The budget holds one model: loading b evicted a, whose tensors were released.
        assert all(t.numel() == 0 for key in executor.order["a"] for t in held[key])
        assert all(t.numel() > 0 for key in executor.order["b"] for t in held[key] if executor.units[key].nbytes)
    finally:
        executor.close()
    assert not path.exists()


def test_the_disk_tier_is_refused_on_a_gpu_and_unknown_tiers_are_refused(small_bundle: Path):
    models = load_bundle(small_bundle).models
    with pytest.raises(RuntimeConfigError, match="tier must be one of"):
        Executor(models, budget=MemoryBudget(10**9), device="cpu", tier="tape")  # type: ignore[arg-type]
    if torch.cuda.is_available():
        with pytest.raises(RuntimeConfigError, match="disk tier runs on the CPU"):
            Executor(models, budget=MemoryBudget(10**9), device="cuda", tier="disk")


def test_a_transfer_model_is_fitted_to_measured_model_loads(small_bundle: Path):
    line = BandwidthModel(2e9, 50e-6)
    loads = [(units, nbytes, units * line.latency_seconds + nbytes / line.bytes_per_second)
             for units, nbytes in ((40, 10_000_000), (120, 5_000_000), (10, 80_000_000), (60, 1_000_000))]
    fitted = fit_bandwidth(loads)
    assert fitted.bytes_per_second == pytest.approx(2e9) and fitted.latency_seconds == pytest.approx(50e-6)
    with pytest.raises(RuntimeConfigError, match="two different shapes"):
        fit_bandwidth([(10, 1000, 0.1), (20, 2000, 0.2)])  # proportional: units and bytes cannot be told apart
    with pytest.raises(RuntimeConfigError, match="no positive bandwidth"):
        fit_bandwidth([(1, 1000, 0.2), (1, 2000, 0.1), (2, 1000, 0.3)])

    executor = Executor(untie(load_bundle(small_bundle).models), budget=MemoryBudget(10**9), device="cpu")
    tensors = {key: unit_tensors(executor._module(unit)) for key, unit in executor.units.items()}
    before = {key: [t.clone() for t in held] for key, held in tensors.items()}
    model, summary = calibrate_disk_tier(executor.units, tensors, repeats=2)
    assert model.bytes_per_second > 0 and model.latency_seconds >= 0
    assert summary["loads"] == 2 * len(executor.models) and summary["reads"] == 2 * len(tensors)
    # The caller's weights are untouched: calibration reads copies.
    assert all(torch.equal(a, b) for key in tensors for a, b in zip(tensors[key], before[key], strict=True))


def test_a_serial_pipeline_is_loads_then_compute():
    steps = [(1.0, 0.5), (0.0, 0.5), (2.0, 0.25)]
    assert pipelined_seconds(steps, overlap=False) == pytest.approx(4.25)
    assert pipelined_seconds(steps) == pytest.approx(3.25)  # the third load runs beside the second layer
