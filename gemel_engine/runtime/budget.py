"""The memory budget and what is resident under it, counted by unique storage (a shared tensor counts once).

A *unit* (see ``gemel_engine.runtime.swap``) is the set of tensors one module owns directly; a layer shared
by several models is one unit used by all of them. Units never share storage with each other, so the
resident bytes are the sum of the resident units, which equals the unique storage they hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gemel_engine.errors import RuntimeBudgetError, RuntimeConfigError


def _check_bytes(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuntimeConfigError(f"{what} must be a whole number of bytes >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class MemoryBudget:
    """Device memory the runtime may use; checked on creation."""

    # Bytes of device memory granted to the runtime (weights plus the reserve).
    capacity_bytes: int
    # Bytes kept free for activations and workspace; weights may use only the rest.
    reserve_bytes: int = 0

    def __post_init__(self) -> None:
        _check_bytes(self.capacity_bytes, "budget capacity")
        _check_bytes(self.reserve_bytes, "budget reserve")
        if self.reserve_bytes >= self.capacity_bytes:
            raise RuntimeConfigError(
                f"budget reserve ({self.reserve_bytes} bytes) leaves nothing of the capacity "
                f"({self.capacity_bytes} bytes) for weights"
            )

    @property
    def weight_bytes(self) -> int:
        """Return the bytes that resident weights may occupy (capacity minus reserve)."""
        return self.capacity_bytes - self.reserve_bytes


@dataclass(frozen=True)
class UnitInfo:
    """What the budget needs to know of one unit: its bytes and which models use it."""

    # Unit key (``model/module.path`` of its first holder).
    key: str
    # Bytes of the distinct storages of the unit's tensors.
    nbytes: int
    # Models whose forward pass uses the unit; more than one means it is shared.
    models: frozenset[str] = field(default_factory=frozenset)

    @property
    def shared(self) -> bool:
        """Return whether several models use this unit."""
        return len(self.models) > 1


class Residency:
    """The units resident on the device under a budget; refuses any load that would exceed it."""

    def __init__(self, units: Iterable[UnitInfo], budget: MemoryBudget) -> None:
        self.budget = budget
        self.units: dict[str, UnitInfo] = {unit.key: unit for unit in units}
        self._resident: set[str] = set()
        self.resident_bytes = 0
        self.peak_bytes = 0

    def is_resident(self, key: str) -> bool:
        """Return whether unit ``key`` is on the device."""
        return key in self._resident

    @property
    def resident(self) -> frozenset[str]:
        """Return the keys of the resident units."""
        return frozenset(self._resident)

    @property
    def free_bytes(self) -> int:
        """Return the weight bytes still free under the budget."""
        return self.budget.weight_bytes - self.resident_bytes

    def add(self, key: str) -> None:
        """Mark unit ``key`` resident.

        Raises:
            RuntimeBudgetError: it does not fit in the free bytes (nothing changes).
            KeyError: no such unit.
        """
        unit = self.units[key]
        if key in self._resident:
            return
        if unit.nbytes > self.free_bytes:
            raise RuntimeBudgetError(
                f"loading {key} ({unit.nbytes} bytes) would exceed the budget: {self.resident_bytes} of "
                f"{self.budget.weight_bytes} weight bytes are resident"
            )
        self._resident.add(key)
        self.resident_bytes += unit.nbytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def remove(self, key: str) -> None:
        """Mark unit ``key`` not resident (no-op when it is not)."""
        if key in self._resident:
            self._resident.remove(key)
            self.resident_bytes -= self.units[key].nbytes

    def breakdown(self) -> dict[str, Any]:
        """Return the resident bytes split into shared units and each model's own units."""
        per_model: dict[str, int] = {}
        shared = 0
        for key in self._resident:
            unit = self.units[key]
            if unit.shared:
                shared += unit.nbytes
            else:
                for model in unit.models:
                    per_model[model] = per_model.get(model, 0) + unit.nbytes
        return {"resident_bytes": self.resident_bytes, "shared_bytes": shared, "per_model_bytes": per_model}


def total_bytes(units: Mapping[str, UnitInfo], keys: Iterable[str]) -> int:
    """Return the bytes of the distinct units among ``keys``."""
    return sum(units[key].nbytes for key in set(keys))
