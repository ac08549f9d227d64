"""The agent protocol's metrics report (docs/agent-protocol.md, section 5) as validated, bounded values.

The agent renders it (``RuntimeMetrics.snapshot``), the server accepts it only through ``MetricsReport.from_json``
and stores ``to_json()``: types, ranges, finite numbers and sizes are checked once, here, so nothing malformed
is ever stored or drawn. Anything outside the rules raises ``ProtocolError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemel_engine.errors import GemelError
from gemel_engine.runtime.gpu import GpuMemory

PROTOCOL_VERSION = 1
# Longest node, query or model name, in characters.
MAX_NAME_CHARS = 100
# Most queries (and models) one report may describe.
MAX_QUERIES = 256
# Largest byte count or frame counter accepted (2**53: exact in JSON numbers everywhere).
MAX_COUNT = 2**53
# Highest frame rate and latency a report may carry.
MAX_FPS = 10_000.0
MAX_LATENCY_MS = 86_400_000.0
# Longest free-text detail an agent may send with a heartbeat or a status.
MAX_DETAIL_CHARS = 2000


class ProtocolError(GemelError):
    """A message of the agent protocol that is malformed, out of range or too large."""


def _count(value: object, field: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{field} must be a whole number, got {type(value).__name__}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ProtocolError(f"{field} must be a whole number, got {value!r}")
    if not 0 <= value <= MAX_COUNT:
        raise ProtocolError(f"{field} must be between 0 and {MAX_COUNT}, got {value!r}")
    return int(value)


def _real(value: object, field: str, *, high: float, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{field} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= high):
        raise ProtocolError(f"{field} must be a finite number between 0 and {high:g}, got {value!r}")
    return float(value)


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{field} must be an object, got {type(value).__name__}")
    return value


def _names(value: Mapping[str, Any], field: str) -> None:
    if len(value) > MAX_QUERIES:
        raise ProtocolError(f"{field} has {len(value)} entries; at most {MAX_QUERIES} are accepted")
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
            raise ProtocolError(f"{field} names must be 1 to {MAX_NAME_CHARS} printable characters")


def _no_other_keys(value: Mapping[str, Any], field: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ProtocolError(f"{field} has unknown fields: {', '.join(map(str, unknown[:5]))}")


def gpu_memory_from_json(value: object, field: str = "memory.gpu") -> GpuMemory:
    """Return the validated ``memory.gpu`` object (its device name is not part of the protocol); raises
    ProtocolError."""
    data = _object(value, field)
    _no_other_keys(data, field, ("used_bytes", "total_bytes", "process_bytes"))
    return GpuMemory(
        name="",
        used_bytes=_count(data.get("used_bytes"), f"{field}.used_bytes"),
        total_bytes=_count(data.get("total_bytes"), f"{field}.total_bytes"),
        process_bytes=_count(data.get("process_bytes"), f"{field}.process_bytes", optional=True),
    )


@dataclass(frozen=True)
class MemoryReport:
    """The runtime's own byte accounting at the time of a report."""

    budget_bytes: int | None  # the memory budget the runtime works under (None: unlimited)
    resident_bytes: int  # weights resident now, shared and per model
    shared_bytes: int  # of which shared between models
    per_model_bytes: dict[str, int]  # per model, its own (unshared) resident weights
    swapped_bytes_total: int  # bytes loaded since the deployment started
    gpu: GpuMemory | None  # the driver's figures, on a GPU

    @classmethod
    def from_json(cls, value: object, field: str = "memory") -> MemoryReport:
        """Return the validated memory report; raises ProtocolError."""
        data = _object(value, field)
        _no_other_keys(data, field, ("budget_bytes", "resident_bytes", "shared_bytes", "per_model_bytes",
                                     "swapped_bytes_total", "gpu"))
        per_model = _object(data.get("per_model_bytes", {}), f"{field}.per_model_bytes")
        _names(per_model, f"{field}.per_model_bytes")
        resident = _count(data.get("resident_bytes", 0), f"{field}.resident_bytes")
        shared = _count(data.get("shared_bytes", 0), f"{field}.shared_bytes")
        if shared > resident:
            raise ProtocolError(f"{field}.shared_bytes ({shared}) exceeds resident_bytes ({resident})")
        gpu = data.get("gpu")
        return cls(
            budget_bytes=_count(data.get("budget_bytes"), f"{field}.budget_bytes", optional=True),
            resident_bytes=resident,
            shared_bytes=shared,
            per_model_bytes={name: _count(size, f"{field}.per_model_bytes.{name}") for name, size in per_model.items()},
            swapped_bytes_total=_count(data.get("swapped_bytes_total", 0), f"{field}.swapped_bytes_total"),
            gpu=None if gpu is None else gpu_memory_from_json(gpu, f"{field}.gpu"),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's ``memory`` object."""
        return {
            "budget_bytes": self.budget_bytes, "resident_bytes": self.resident_bytes,
            "shared_bytes": self.shared_bytes, "per_model_bytes": dict(self.per_model_bytes),
            "swapped_bytes_total": self.swapped_bytes_total, "gpu": None if self.gpu is None else self.gpu.to_json(),
        }


@dataclass(frozen=True)
class QueryFigures:
    """One query's serving figures at the time of a report."""

    fps: float  # frames served per second, recently
    latency_p50_ms: float | None  # median latency (None before the first frame)
    latency_p95_ms: float | None  # 95th percentile latency
    frames_total: int  # frames that arrived since the deployment started
    dropped_total: int  # of which not served in time
    drop_rate: float  # dropped_total / frames_total, in [0, 1]
    effective_accuracy: float | None  # accuracy over every arrived frame, dropped ones counted wrong

    @classmethod
    def from_json(cls, value: object, field: str) -> QueryFigures:
        """Return the validated figures of one query; raises ProtocolError."""
        data = _object(value, field)
        _no_other_keys(data, field, ("fps", "latency_p50_ms", "latency_p95_ms", "frames_total", "dropped_total",
                                     "drop_rate", "effective_accuracy"))
        frames = _count(data.get("frames_total", 0), f"{field}.frames_total")
        dropped = _count(data.get("dropped_total", 0), f"{field}.dropped_total")
        if dropped > frames:
            raise ProtocolError(f"{field}.dropped_total ({dropped}) exceeds frames_total ({frames})")
        return cls(
            fps=_real(data.get("fps", 0.0), f"{field}.fps", high=MAX_FPS),
            latency_p50_ms=_real(data.get("latency_p50_ms"), f"{field}.latency_p50_ms", high=MAX_LATENCY_MS,
                                 optional=True),
            latency_p95_ms=_real(data.get("latency_p95_ms"), f"{field}.latency_p95_ms", high=MAX_LATENCY_MS,
                                 optional=True),
            frames_total=frames,
            dropped_total=dropped,
            drop_rate=_real(data.get("drop_rate", 0.0), f"{field}.drop_rate", high=1.0),
            effective_accuracy=_real(data.get("effective_accuracy"), f"{field}.effective_accuracy", high=1.0,
                                     optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's per-query object."""
        return {
            "fps": self.fps, "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
            "frames_total": self.frames_total, "dropped_total": self.dropped_total, "drop_rate": self.drop_rate,
            "effective_accuracy": self.effective_accuracy,
        }


@dataclass(frozen=True)
class MetricsReport:
    """The ``memory`` and ``queries`` of one metrics report."""

    memory: MemoryReport
    queries: dict[str, QueryFigures]  # per query name

    @classmethod
    def from_json(cls, value: object) -> MetricsReport:
        """Return the validated report from ``{"memory": {...}, "queries": {...}}``; raises ProtocolError."""
        data = _object(value, "report")
        queries = _object(data.get("queries", {}), "queries")
        _names(queries, "queries")
        return cls(
            memory=MemoryReport.from_json(data.get("memory", {})),
            queries={name: QueryFigures.from_json(figures, f"queries.{name}") for name, figures in queries.items()},
        )

    def to_json(self) -> dict[str, Any]:
        """Return ``{"memory": {...}, "queries": {...}}`` as the protocol writes them."""
        return {"memory": self.memory.to_json(),
                "queries": {name: figures.to_json() for name, figures in self.queries.items()}}
