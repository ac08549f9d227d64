"""The executor: models on a device under a memory budget, run query by query with swapping as needed.

Every inference runs the model's real forward pass (real outputs, real accuracy). Its time is charged to
the runtime's clock:

- on CUDA, the measured wall time of the pass, whose missing layers are copied on a side stream while
  earlier layers compute;
- on the CPU with the ``disk`` tier, the measured wall time of the pass, whose missing layers are first
  read from the tier's weight file on disk with the page cache dropped (``gemel_engine.runtime.disk``);
- on the CPU with the ``simulated`` tier, the modelled time of the same pipeline: each missing layer's
  transfer from the bandwidth model (simulated) overlapped with each layer's compute, which is either
  measured by forward hooks during this very pass (``timing="measured"``) or read from the layer profile
  (``timing="profiled"``: repeatable). Such figures carry ``simulated: true``.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gemel_engine.errors import RuntimeBudgetError, RuntimeConfigError
from gemel_engine.modelset import ModelSet
from gemel_engine.queries import Target, Task, predict
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import Clock, VirtualClock
from gemel_engine.runtime.disk import DiskMover
from gemel_engine.runtime.gpu import gpu_memory
from gemel_engine.runtime.profile import LayerTimer, ModelProfile
from gemel_engine.runtime.swap import (
    BandwidthModel,
    CudaMover,
    EvictionPolicy,
    Mover,
    SimulatedMover,
    SwapManager,
    SwapPlan,
    Unit,
    find_units,
    pipelined_seconds,
    unit_tensors,
)
from gemel_engine.train import TrainingError, resolve_device

Timing = Literal["measured", "profiled"]
TIMINGS: tuple[Timing, ...] = ("measured", "profiled")
# Where swapped-out units live: ``auto`` is ``cuda`` on a GPU and ``simulated`` on the CPU; ``disk`` (CPU only)
# reads them from a weight file on disk, measured.
Tier = Literal["auto", "simulated", "disk"]
TIERS: tuple[Tier, ...] = ("auto", "simulated", "disk")
_MEASURED_KEPT = 8


def untie(models: Mapping[str, nn.Module] | ModelSet) -> dict[str, nn.Module]:
    """Return an unmerged copy of ``models``: each model deep-copied alone, so no tensor is shared across models."""
    lookup = models.as_dict() if isinstance(models, ModelSet) else models
    return {name: copy.deepcopy(model) for name, model in lookup.items()}


@dataclass(frozen=True)
class Inference:
    """One batch run by the executor."""

    # One prediction per image (class index, or boxes/labels/scores).
    predictions: list[Target]
    # Seconds charged to the clock (modelled on the CPU, measured on CUDA).
    seconds: float
    # Bytes copied to the device for this batch.
    loaded_bytes: int
    # Seconds of transfers among ``seconds`` (before overlap).
    transfer_seconds: float


class Executor:
    """Runs named models on one device under a memory budget, swapping units as needed."""

    def __init__(
        self,
        models: Mapping[str, nn.Module] | ModelSet,
        *,
        budget: MemoryBudget,
        device: torch.device | str = "auto",
        clock: Clock | None = None,
        policy: EvictionPolicy | str = "lru",
        keep_shared: bool = True,
        bandwidth: BandwidthModel | None = None,
        profiles: Mapping[str, ModelProfile] | None = None,
        timing: Timing = "measured",
        tier: Tier = "auto",
        disk_folder: Path | None = None,
    ) -> None:
        if timing not in TIMINGS:
            raise RuntimeConfigError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
        if tier not in TIERS:
            raise RuntimeConfigError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
        if timing == "profiled" and not profiles:
            raise RuntimeConfigError("profiled timing needs a layer profile per model")
        lookup = models.as_dict() if isinstance(models, ModelSet) else dict(models)
        self.models = {name: model.eval() for name, model in lookup.items()}
        try:
            self.device = resolve_device(device)
        except TrainingError as exc:  # the runtime's callers handle configuration errors
            raise RuntimeConfigError(str(exc)) from None
        if tier == "disk" and self.device.type != "cpu":
            raise RuntimeConfigError("the disk tier runs on the CPU; a GPU swaps from pinned host memory")
        self.tier = "cuda" if self.device.type == "cuda" else ("disk" if tier == "disk" else "simulated")
        self.clock = clock or VirtualClock()
        self.bandwidth = bandwidth or BandwidthModel()
        self.profiles = dict(profiles or {})
        self.timing = timing
        for model in self.models.values():
            if not any(t.is_meta for t in model.parameters()):  # meta models (the simulator's) have nothing to move
                model.to("cpu")
        self.units, module_order = find_units(self.models)
        self.order = {name: self._execution_order(name, keys) for name, keys in module_order.items()}
        self._layer_unit = {member: key for key, unit in self.units.items() for member in unit.members}
        largest = max(self.model_bytes(name) for name in self.models)
        if largest > budget.weight_bytes:
            raise RuntimeBudgetError(
                f"the largest model needs {largest} bytes of weights but the budget leaves {budget.weight_bytes}"
            )
        mover: Mover
        if self.tier == "cuda":
            tensors = {key: unit_tensors(self._module(unit)) for key, unit in self.units.items()}
            mover = CudaMover(self.units, tensors, self.device, self.bandwidth)
        elif self.tier == "disk":
            tensors = {key: unit_tensors(self._module(unit)) for key, unit in self.units.items()}
            mover = DiskMover(self.units, tensors, disk_folder)
        else:
            mover = SimulatedMover(self.units, self.bandwidth)
        self.swap = SwapManager(
            self.units, budget, policy=policy, keep_shared=keep_shared, mover=mover, bandwidth=self.bandwidth
        )
        self._hooks = self._register_cuda_hooks() if self.device.type == "cuda" else []
        self._measured: dict[str, deque[float]] = {}

    @property
    def wall_timed(self) -> bool:
        """Return whether every charge is the measured wall time of the work (CUDA and the disk tier)."""
        return self.tier != "simulated"

    @property
    def simulated(self) -> bool:
        """Return whether the times this executor charges are simulated (CPU transfers or profiled compute)."""
        return self.swap.mover.simulated or self.timing == "profiled"

    def _module(self, unit: Unit) -> nn.Module:
        model, path = unit.members[0]
        return self.models[model].get_submodule(path)

    def _execution_order(self, name: str, keys: list[str]) -> list[str]:
        profile = self.profiles.get(name)
        if profile is None:
            return keys
        by_path = {path: key for key in keys for model, path in self._members(key) if model == name}
        ordered = [by_path[layer.path] for layer in profile.layers if layer.path in by_path]
        return [*dict.fromkeys(ordered), *(key for key in keys if key not in ordered)]

    def _members(self, key: str) -> tuple[tuple[str, str], ...]:
        return self.units[key].members

    def _register_cuda_hooks(self) -> list[Any]:
        handles = []
        for key, unit in self.units.items():
            for model, path in unit.members:
                module = self.models[model].get_submodule(path)
                wait = self.swap.mover.before_layer
                handles.append(module.register_forward_pre_hook(lambda _m, _i, key=key, wait=wait: wait(key)))
        return handles

    def model_bytes(self, name: str) -> int:
        """Return the bytes of model ``name``'s units (its weights as resident on the device)."""
        return sum(self.units[key].nbytes for key in self.order[name])

    def total_bytes(self) -> int:
        """Return the bytes of every unit (all models resident at once, shared units once)."""
        return sum(unit.nbytes for unit in self.units.values())

    def missing_bytes(self, name: str) -> int:
        """Return the bytes model ``name`` would have to load now."""
        return sum(self.units[key].nbytes for key in self.swap.missing(self.order[name]))

    def preload(self, names: Sequence[str] | None = None, *, shared_only: bool = False, pin: bool = False) -> int:
        """Load the units of ``names`` (all models by default) that fit without evicting; return bytes loaded.

        ``shared_only`` loads only shared units (the merged scheduler's resident set); ``pin`` keeps what was
        loaded resident for good. The transfers are charged to the clock like any other load (measured on CUDA,
        the bandwidth model's seconds on a simulated device), so a scheduler that loads ahead pays for it the
        same way as one that loads on demand.
        """
        keys = [key for name in (names or list(self.models)) for key in self.order[name]]
        if shared_only:
            keys = [key for key in keys if self.units[key].shared]
        started = time.perf_counter()
        loaded, seconds = self.swap.preload(list(dict.fromkeys(keys)), pin=pin)
        self._charge_transfers(started, seconds)
        return sum(self.units[key].nbytes for key in loaded)

    def _charge_transfers(self, started: float, seconds: Sequence[float]) -> None:
        """Charge the clock for loads begun at ``started`` (``time.perf_counter``) without compute: their measured
        wall time where transfers are real (after the GPU finishes them), else their modelled ``seconds``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.clock.account(elapsed if self.wall_timed else sum(seconds), elapsed)

    def _layer_steps(
        self, name: str, loads: Mapping[str, float], compute: Mapping[str, float]
    ) -> list[tuple[float, float]]:
        steps = []
        charged: set[str] = set()
        paths = [path for key in self.order[name] for model, path in self._members(key) if model == name]
        for path in paths:
            key = self._layer_unit[(name, path)]
            load = loads.get(key, 0.0) if key not in charged else 0.0
            charged.add(key)
            steps.append((load, compute.get(path, 0.0)))
        return steps

    def _pipelined(self, name: str, plan: SwapPlan, transfer: Sequence[float], compute: Mapping[str, float]) -> float:
        steps = self._layer_steps(name, dict(zip(plan.load, transfer, strict=True)), compute)
        return pipelined_seconds(steps, overlap=self.swap.mover.overlaps_compute)

    def estimate(self, name: str, batch: int, *, loads: bool = True) -> float:
        """Return the predicted seconds of running ``batch`` frames on model ``name`` now, with the loads of what it
        lacks (``loads=False``: as if it were all resident).

        Uses the layer profile when there is one, else the fastest of the recent measured passes (per frame)
        times the batch size: optimistic, so one slow pass cannot make a query look infeasible for good.
        """
        missing = self.swap.missing(self.order[name]) if loads else []
        loads = {key: self.bandwidth.seconds(self.units[key].nbytes) for key in missing}
        profile = self.profiles.get(name)
        if profile is not None:
            steps = self._layer_steps(name, loads, profile.layer_seconds(batch))
            return pipelined_seconds(steps, overlap=self.swap.mover.overlaps_compute)
        recent = self._measured.get(name)
        return sum(loads.values()) + (min(recent) if recent else 0.0) * batch

    def load(self, name: str) -> int:
        """Load what model ``name`` lacks (evicting by the policy) without running it; charge the clock for the
        transfers like ``infer`` does. Return the bytes loaded.

        Raises:
            KeyError: no such model.
            RuntimeBudgetError: the model cannot fit beside the pinned units.
        """
        started = time.perf_counter()
        plan, transfer = self._swap_in(name)
        self._charge_transfers(started, transfer)
        return plan.load_bytes

    def _swap_in(self, name: str) -> tuple[SwapPlan, list[float]]:
        needed = self.order[name]
        plan = self.swap.plan(needed)
        transfer = self.swap.apply(plan)
        self.swap.touch(needed)
        return plan, transfer

    def infer(self, name: str, images: np.ndarray, task: Task) -> Inference:
        """Run model ``name`` on ``images`` (N×H×W×3 uint8), loading what it lacks first; charge the clock.

        Raises:
            KeyError: no such model.
            RuntimeBudgetError: the model cannot fit beside the pinned units.
        """
        model = self.models[name]
        started = time.perf_counter()
        plan, transfer = self._swap_in(name)
        timer = LayerTimer(model) if self.tier == "simulated" and self.timing == "measured" else None
        if timer is not None:
            with timer.measure():
                predictions = predict(model, images, task, batch_size=max(1, len(images)))
        else:
            predictions = predict(model, images, task, batch_size=max(1, len(images)))
        elapsed = time.perf_counter() - started
        if self.wall_timed:
            modelled = elapsed
        else:
            compute = timer.seconds if timer is not None else self.profiles[name].layer_seconds(max(1, len(images)))
            modelled = self._pipelined(name, plan, transfer, compute)
        self._measured.setdefault(name, deque(maxlen=_MEASURED_KEPT)).append(
            (modelled - sum(transfer)) / max(1, len(images))
        )
        self.clock.account(modelled, elapsed)
        return Inference(predictions, modelled, plan.load_bytes, sum(transfer))

    def run(self, name: str, frames: Sequence[Any], task: Task) -> list[Target]:
        """Return model ``name``'s predictions for ``frames`` (objects with an ``image``), via ``infer``."""
        return self.infer(name, np.stack([frame.image for frame in frames]), task).predictions

    def warm_up(self, image: np.ndarray, tasks: Mapping[str, Task]) -> None:
        """Run each model once on ``image`` off the clock (CPU: first passes allocate and are slow; not timed).

        On CUDA nothing runs: a pass would need the model loaded, which the schedule itself does. On the disk
        tier each model is read in to run, then everything is evicted again and the swap counters start over,
        so the run starts cold like every other.
        """
        if self.device.type != "cpu":
            return
        for name, task in tasks.items():
            if self.tier == "disk":
                self.swap.apply(self.swap.plan(self.order[name]))
            predict(self.models[name], image[np.newaxis], task, batch_size=1)
        if self.tier == "disk":
            self.swap.evict_all()
            self.swap = SwapManager(
                self.units, self.swap.budget, policy=self.swap.policy, keep_shared=self.swap.keep_shared,
                mover=self.swap.mover, bandwidth=self.bandwidth,
            )

    def memory(self) -> dict[str, Any]:
        """Return the protocol's ``memory`` object: budget, resident bytes (shared vs per model), swaps, GPU."""
        breakdown = self.swap.residency.breakdown()
        gpu = gpu_memory(self.device.index or 0) if self.device.type == "cuda" else None
        return {
            "budget_bytes": self.swap.budget.capacity_bytes,
            **breakdown,
            "swapped_bytes_total": self.swap.stats.loaded_bytes,
            "gpu": None if gpu is None else gpu.to_json(),
        }

    def close(self) -> None:
        """Evict everything and remove the hooks; the executor must not be used afterwards."""
        for handle in self._hooks:
            handle.remove()
        self.swap.evict_all()
        self.swap.mover.close()
