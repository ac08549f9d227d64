"""Swapping at layer granularity: units, eviction policies, transfer cost and the movers that do the copies.

A *unit* is one module that owns parameters or buffers directly; a layer shared by several models (one
storage, tied by ``gemel_engine.sharing``) is one unit used by all of them. Units are loaded and
evicted whole.

- On CUDA, every unit keeps a pinned host copy; loading copies it to the device on a side stream,
  non-blocking, and records an event the compute stream waits on just before the layer runs (layer
  by layer, overlapped with compute: PipeSwitch's idea). Evicting points the tensors back at the host.
- On the CPU the "device" is a budgeted region of host memory: nothing moves, and each transfer is
  charged by a ``BandwidthModel`` (bytes / bandwidth + latency). Such times are *simulated*.

Eviction policies live in a registry that refuses duplicate names (``lru`` by default, ``mru`` as the
paper's simulator used). Shared units are evicted last whatever the policy, when asked to keep them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from gemel_engine.errors import RuntimeBudgetError, RuntimeConfigError
from gemel_engine.memory import _storage_key, unique_storage_bytes
from gemel_engine.registry import Registry
from gemel_engine.runtime.budget import MemoryBudget, Residency, UnitInfo


@dataclass(frozen=True)
class Unit(UnitInfo):
    """A unit with the modules that hold it: ``(model, module path)`` per holder, in model order."""

    # Every (model, module path) whose module owns these tensors; several for a shared layer.
    members: tuple[tuple[str, str], ...] = ()


def unit_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Return the parameters and buffers ``module`` owns directly (not its children's)."""
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def find_units(models: Mapping[str, nn.Module]) -> tuple[dict[str, Unit], dict[str, list[str]]]:
    """Return the units of ``models`` and, per model, its unit keys in module order.

    Modules whose direct tensors live in the same storages (a merged layer) form one unit.

    Raises:
        RuntimeConfigError: two modules share only some of their tensors (a partly tied layer), which
            cannot be swapped as units.
    """
    by_storage: dict[frozenset, str] = {}
    storage_owner: dict[tuple[str, int], str] = {}
    members: dict[str, list[tuple[str, str]]] = {}
    sizes: dict[str, int] = {}
    order: dict[str, list[str]] = {}
    for model_name, model in models.items():
        order[model_name] = []
        for path, module in model.named_modules():
            tensors = unit_tensors(module)
            if not tensors:
                continue
            storages = frozenset(_storage_key(t) for t in tensors)
            key = by_storage.get(storages)
            if key is None:
                clash = sorted({storage_owner[s] for s in storages if s in storage_owner})
                if clash:
                    raise RuntimeConfigError(f"{model_name}/{path} shares only some tensors with {clash[0]}")
                key = f"{model_name}/{path}"
                by_storage[storages] = key
                storage_owner.update(dict.fromkeys(storages, key))
                members[key] = []
                sizes[key] = unique_storage_bytes(tensors)
            members[key].append((model_name, path))
            if key not in order[model_name]:
                order[model_name].append(key)
    units = {
        key: Unit(key=key, nbytes=sizes[key], models=frozenset(m for m, _ in held), members=tuple(held))
        for key, held in members.items()
    }
    return units, order


@dataclass(frozen=True)
class BandwidthModel:
    """The cost of one host-to-device transfer on a simulated device: bytes / bandwidth + latency."""

    # Sustained host-to-device bandwidth in bytes per second (default 8 GB/s: a PCIe 3.0 x8-class link).
    bytes_per_second: float = 8e9
    # Fixed cost of each transfer (launch, synchronisation), in seconds.
    latency_seconds: float = 20e-6

    def __post_init__(self) -> None:
        bandwidth, latency = self.bytes_per_second, self.latency_seconds
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not bandwidth > 0:
            raise RuntimeConfigError(f"bandwidth must be a positive number of bytes per second, got {bandwidth!r}")
        if not math.isfinite(bandwidth):
            raise RuntimeConfigError("bandwidth must be finite")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency < math.inf:
            raise RuntimeConfigError(f"transfer latency must be a finite number of seconds >= 0, got {latency!r}")

    def seconds(self, nbytes: int) -> float:
        """Return the simulated seconds to move ``nbytes`` (0 for nothing)."""
        return 0.0 if nbytes <= 0 else nbytes / self.bytes_per_second + self.latency_seconds

    def to_json(self) -> dict[str, float]:
        """Return the model as JSON-ready data."""
        return {"bytes_per_second": self.bytes_per_second, "latency_seconds": self.latency_seconds}


class EvictionPolicy(ABC):
    """Orders eviction candidates: the first one is evicted first."""

    name: ClassVar[str]

    @abstractmethod
    def order(self, candidates: Sequence[str], last_used: Mapping[str, int]) -> list[str]:
        """Return ``candidates`` in eviction order, given each unit's last-use tick (higher is newer)."""


POLICIES: Registry[type[EvictionPolicy]] = Registry("eviction policy")
register_policy = POLICIES.register


def get_policy(name: str) -> EvictionPolicy:
    """Return a new instance of the eviction policy ``name``.

    Raises:
        RuntimeConfigError: no such policy; the message lists the known ones.
    """
    return POLICIES.create(name)


@register_policy
class LeastRecentlyUsed(EvictionPolicy):
    """Evict the unit used longest ago first."""

    name = "lru"

    def order(self, candidates: Sequence[str], last_used: Mapping[str, int]) -> list[str]:
        """Return the candidates oldest use first."""
        return sorted(candidates, key=lambda key: (last_used.get(key, -1), key))


@register_policy
class MostRecentlyUsed(EvictionPolicy):
    """Evict the unit used most recently first (what the paper's simulator did)."""

    name = "mru"

    def order(self, candidates: Sequence[str], last_used: Mapping[str, int]) -> list[str]:
        """Return the candidates newest use first."""
        return sorted(candidates, key=lambda key: (-last_used.get(key, -1), key))


class Mover(ABC):
    """Moves units' tensors between host and device (or pretends to, on a simulated device)."""

    # True when transfer times come from a bandwidth model rather than the hardware.
    simulated: bool = True
    # True when loads run beside compute, layer by layer (PipeSwitch); False when a load finishes first.
    overlaps_compute: bool = True

    @abstractmethod
    def load(self, keys: Sequence[str]) -> list[float]:
        """Start loading ``keys`` in order; return each transfer's seconds (simulated or estimated)."""

    @abstractmethod
    def evict(self, keys: Sequence[str]) -> None:
        """Release the device copies of ``keys``."""

    def before_layer(self, key: str) -> None:  # noqa: B027 - a simulated device has nothing to wait for
        """Wait, on the compute stream, until unit ``key`` has arrived (CUDA only)."""

    def close(self) -> None:  # noqa: B027 - a simulated device holds nothing
        """Release everything the mover holds on the device."""


class SimulatedMover(Mover):
    """A budgeted region of host memory: nothing moves; each transfer costs what the bandwidth model says."""

    simulated = True

    def __init__(self, units: Mapping[str, UnitInfo], bandwidth: BandwidthModel) -> None:
        self.units = units
        self.bandwidth = bandwidth

    def load(self, keys: Sequence[str]) -> list[float]:
        """Return the simulated seconds of each transfer."""
        return [self.bandwidth.seconds(self.units[key].nbytes) for key in keys]

    def evict(self, keys: Sequence[str]) -> None:
        """Do nothing: the weights stay in host memory."""


class CudaMover(Mover):
    """Pinned host copies, non-blocking copies on a side stream, and one event per loaded unit."""

    simulated = False

    def __init__(
        self,
        units: Mapping[str, Unit],
        tensors: Mapping[str, list[torch.Tensor]],
        device: torch.device,
        bandwidth: BandwidthModel,
    ) -> None:
        self.units = units
        self.device = device
        self.bandwidth = bandwidth
        self.stream = torch.cuda.Stream(device=device)
        self._tensors = tensors
        self._host: dict[str, list[torch.Tensor]] = {}
        self._events: dict[str, torch.cuda.Event] = {}
        for key, held in tensors.items():
            pinned = [t.data.detach().to("cpu").pin_memory() for t in held]
            for tensor, host in zip(held, pinned, strict=True):
                tensor.data = host
            self._host[key] = pinned

    def load(self, keys: Sequence[str]) -> list[float]:
        """Queue the copies on the side stream; return the bandwidth model's estimate of each (not waited for)."""
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        estimates = []
        with torch.cuda.stream(self.stream):
            for key in keys:
                for tensor, host in zip(self._tensors[key], self._host[key], strict=True):
                    on_device = host.to(self.device, non_blocking=True)
                    on_device.record_stream(compute)
                    tensor.data = on_device
                event = torch.cuda.Event()
                event.record(self.stream)
                self._events[key] = event
                estimates.append(self.bandwidth.seconds(self.units[key].nbytes))
        return estimates

    def before_layer(self, key: str) -> None:
        """Make the compute stream wait for unit ``key``'s copy, if one is in flight."""
        event = self._events.pop(key, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def evict(self, keys: Sequence[str]) -> None:
        """Point the unit's tensors back at their pinned host copies (the device memory is released)."""
        if keys:
            torch.cuda.current_stream(self.device).synchronize()
        for key in keys:
            self._events.pop(key, None)
            for tensor, host in zip(self._tensors[key], self._host[key], strict=True):
                tensor.data = host

    def close(self) -> None:
        """Evict every unit and return the cached device blocks to the driver."""
        self.evict(list(self._tensors))
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class SwapPlan:
    """What one inference must load and what it evicts first to make room."""

    # Units to load, in execution order.
    load: tuple[str, ...]
    # Units to evict before loading.
    evict: tuple[str, ...]
    # Bytes of the units to load.
    load_bytes: int = 0


@dataclass
class SwapStats:
    """Running totals of the swapping done."""

    # Bytes copied to the device.
    loaded_bytes: int = 0
    # Bytes released from the device.
    evicted_bytes: int = 0
    # Units loaded.
    loads: int = 0
    # Seconds of transfers (simulated on CPU, estimated on CUDA).
    transfer_seconds: float = 0.0
    # Extra counters (e.g. per model) for reports.
    by_model: dict[str, int] = field(default_factory=dict)


class SwapManager:
    """Decides what to load and evict so a model's units fit the budget, and keeps the residency honest."""

    def __init__(
        self,
        units: Mapping[str, UnitInfo],
        budget: MemoryBudget,
        *,
        policy: EvictionPolicy | str = "lru",
        keep_shared: bool = True,
        mover: Mover | None = None,
        bandwidth: BandwidthModel | None = None,
    ) -> None:
        self.units = dict(units)
        self.residency = Residency(self.units.values(), budget)
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.keep_shared = keep_shared
        self.bandwidth = bandwidth or BandwidthModel()
        self.mover = mover or SimulatedMover(self.units, self.bandwidth)
        self.pinned: set[str] = set()
        self.stats = SwapStats()
        self._last_used: dict[str, int] = {}
        self._tick = 0

    @property
    def budget(self) -> MemoryBudget:
        """Return the memory budget."""
        return self.residency.budget

    def missing(self, needed: Iterable[str]) -> list[str]:
        """Return the units among ``needed`` that are not resident, in the given order, once each."""
        seen: set[str] = set()
        out = []
        for key in needed:
            if key not in seen and not self.residency.is_resident(key):
                seen.add(key)
                out.append(key)
        return out

    def plan(self, needed: Sequence[str]) -> SwapPlan:
        """Return the loads and evictions that make every unit of ``needed`` resident.

        Candidates for eviction are resident units not in ``needed`` and not pinned; non-shared units go
        before shared ones when ``keep_shared``, each tier in the policy's order.

        Raises:
            RuntimeBudgetError: ``needed`` alone does not fit the budget.
        """
        load = self.missing(needed)
        load_bytes = sum(self.units[key].nbytes for key in load)
        need = load_bytes - self.residency.free_bytes
        evict: list[str] = []
        if need > 0:
            keep = set(needed) | self.pinned
            candidates = [key for key in self.residency.resident if key not in keep]
            tiers = (
                [[k for k in candidates if not self.units[k].shared], [k for k in candidates if self.units[k].shared]]
                if self.keep_shared
                else [candidates]
            )
            for tier in tiers:
                for key in self.policy.order(tier, self._last_used):
                    if need <= 0:
                        break
                    evict.append(key)
                    need -= self.units[key].nbytes
            if need > 0:
                total = sum(self.units[key].nbytes for key in set(needed))
                raise RuntimeBudgetError(
                    f"{total} bytes of weights are needed at once but the budget leaves "
                    f"{self.budget.weight_bytes - sum(self.units[k].nbytes for k in self.pinned - set(needed))} "
                    f"bytes for them"
                )
        return SwapPlan(tuple(load), tuple(evict), load_bytes)

    def apply(self, plan: SwapPlan) -> list[float]:
        """Evict, then start the loads of ``plan``; return each load's transfer seconds, in load order."""
        if plan.evict:
            self.mover.evict(plan.evict)
            for key in plan.evict:
                self.residency.remove(key)
                self.stats.evicted_bytes += self.units[key].nbytes
        for key in plan.load:
            self.residency.add(key)
        seconds = self.mover.load(plan.load) if plan.load else []
        self.stats.loaded_bytes += plan.load_bytes
        self.stats.loads += len(plan.load)
        self.stats.transfer_seconds += sum(seconds)
        return seconds

    def touch(self, keys: Iterable[str]) -> None:
        """Record a use of ``keys`` (for the eviction policy)."""
        self._tick += 1
        for key in keys:
            self._last_used[key] = self._tick

    def preload(self, keys: Sequence[str], *, pin: bool) -> tuple[list[str], list[float]]:
        """Load as many of ``keys`` as fit, in order, without evicting; optionally pin them. Return those loaded
        and each one's transfer seconds (as ``apply`` reports them)."""
        fitting = []
        free = self.residency.free_bytes
        for key in self.missing(keys):
            if self.units[key].nbytes <= free:
                fitting.append(key)
                free -= self.units[key].nbytes
        seconds = self.apply(SwapPlan(tuple(fitting), (), sum(self.units[k].nbytes for k in fitting)))
        if pin:
            self.pinned.update(k for k in keys if self.residency.is_resident(k))
        return fitting, seconds

    def evict_all(self) -> None:
        """Evict every resident unit (pins included) and forget the pins."""
        resident = sorted(self.residency.resident)
        self.mover.evict(resident)
        for key in resident:
            self.residency.remove(key)
        self.pinned.clear()


def pipelined_seconds(steps: Sequence[tuple[float, float]], *, overlap: bool = True) -> float:
    """Return the time of a layer-by-layer run where loads overlap compute (PipeSwitch), or, without
    ``overlap``, where every load finishes before compute starts (the disk tier).

    ``steps`` is, in execution order, (load seconds, compute seconds) per layer: loads run back to back
    on the copy stream; each layer computes after its own load and after the previous layer.
    """
    if not overlap:
        return sum(load + compute for load, compute in steps)
    loaded = computed = 0.0
    for load, compute in steps:
        loaded += load
        computed = max(computed, loaded) + compute
    return computed
