"""The agent <-> server protocol (docs/agent-protocol.md) in one place: what both sides import.

- ``PROTOCOL_VERSION`` and the protocol's size limits.
- The desired state the server sends and the agent serves: ``DeploymentSpec`` of ``QuerySpec``s, each watching a
  ``CameraFeed``; ``list_schedulers`` names the schedulers a deployment may ask for.
- What the server may know of a bundle it hands out: ``BUNDLE_FILE_NAMES``, ``bundle_file_digests`` and
  ``bundle_model_names`` (re-exported from ``gemel_engine.bundle``, so the web app never names a bundle's files).
- The metrics report (section 5) as validated, bounded values. The agent renders it (``RuntimeMetrics.snapshot``),
  the server accepts it only through ``MetricsReport.from_json`` and stores ``to_json()``: types, ranges, finite
  numbers and sizes are checked once, here, so nothing malformed is ever stored or drawn. Anything outside the
  rules raises ``ProtocolError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemel_engine.bundle import BUNDLE_FILE_NAMES, bundle_file_digests, bundle_model_names
from gemel_engine.data.frames import check_fps
from gemel_engine.errors import DeploymentError, GemelError, SourceError
from gemel_engine.plan import check_model_name
from gemel_engine.queries import Task
from gemel_engine.runtime.gpu import GpuMemory
from gemel_engine.runtime.scheduler import list_schedulers

__all__ = [
    "BUNDLE_FILE_NAMES", "MAX_COUNT", "MAX_DETAIL_CHARS", "MAX_NAME_CHARS", "MAX_START_FRAME", "PROTOCOL_VERSION",
    "CameraFeed", "DeploymentSpec", "MemoryReport", "MetricsReport", "ProtocolError", "QueryFigures", "QuerySpec",
    "bundle_file_digests", "bundle_model_names", "gpu_memory_from_json", "list_schedulers",
]

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


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DeploymentError(f"{where}: {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


# The largest start frame a deployment may name (a day of 30 fps video is 2.6 million frames).
MAX_START_FRAME = 100_000_000


@dataclass(frozen=True)
class CameraFeed:
    """A camera as a deployment names it; checked on creation."""

    # Camera name, unique in the deployment.
    name: str
    # Source URI (``synthetic://...``, a path, ``rtsp://...``; see ``gemel_engine.data.open_source``).
    source: str
    # Frames per second to pull.
    fps: float
    # Width, in pixels, frames are resized to (the models' input).
    width: int
    # Height, in pixels, frames are resized to.
    height: int
    # First frame to serve, and where a finished clip starts again: the camera's first held-out test frame, so
    # the effective accuracy the monitor shows is measured on frames no training or search has seen (a live
    # stream ignores it: all its frames are new).
    start_frame: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DeploymentError(f"camera name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise DeploymentError(f"camera {self.name!r}: source must be a non-empty string")
        try:
            fps = check_fps(self.fps, f"camera {self.name!r}")
        except SourceError as exc:
            raise DeploymentError(str(exc)) from None
        for key in ("width", "height"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8192:
                raise DeploymentError(f"camera {self.name!r}: {key} must be an integer in [1, 8192], got {value!r}")
        start = self.start_frame
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= MAX_START_FRAME:
            raise DeploymentError(
                f"camera {self.name!r}: start_frame must be an integer in [0, {MAX_START_FRAME}], got {start!r}"
            )
        object.__setattr__(self, "fps", float(fps))

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's ``camera`` object."""
        return {"name": self.name, "source": self.source, "fps": self.fps, "width": self.width, "height": self.height,
                "start_frame": self.start_frame}

    @classmethod
    def from_json(cls, data: object) -> CameraFeed:
        """Return the camera described by the protocol's ``camera`` object.

        Raises:
            DeploymentError: missing or malformed fields.
        """
        if not isinstance(data, dict):
            raise DeploymentError(f"camera must be an object, got {type(data).__name__}")
        where = f"camera {data.get('name')!r}"
        return cls(
            name=_field(data, "name", str, where), source=_field(data, "source", str, where),
            fps=_field(data, "fps", (int, float), where), width=_field(data, "width", int, where),
            height=_field(data, "height", int, where),
            start_frame=_field(data, "start_frame", int, where) if "start_frame" in data else 0,
        )


@dataclass(frozen=True)
class QuerySpec:
    """One query of a deployment: a model of the bundle watching a camera for a task, under an SLO."""

    # Query name, unique in the deployment (metrics are keyed by it).
    name: str
    # Model name inside the bundle's manifest.
    model: str
    task: Task
    camera: CameraFeed
    # Latency bound from a frame's arrival to its result, in milliseconds.
    slo_ms: float

    def __post_init__(self) -> None:
        try:
            check_model_name(self.name)
            check_model_name(self.model)
        except GemelError as exc:
            raise DeploymentError(f"query {self.name!r}: {exc}") from None
        slo = self.slo_ms
        if isinstance(slo, bool) or not isinstance(slo, int | float) or not math.isfinite(slo) or slo <= 0:
            raise DeploymentError(f"query {self.name!r}: slo_ms must be a positive number, got {slo!r}")
        object.__setattr__(self, "slo_ms", float(slo))

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's query object."""
        return {
            "name": self.name, "model": self.model, "task": self.task.to_json(),
            "camera": self.camera.to_json(), "slo_ms": self.slo_ms,
        }

    @classmethod
    def from_json(cls, data: object) -> QuerySpec:
        """Return the query described by the protocol's query object.

        Raises:
            DeploymentError: missing or malformed fields (the task's own errors included).
        """
        if not isinstance(data, dict):
            raise DeploymentError(f"query must be an object, got {type(data).__name__}")
        where = f"query {data.get('name')!r}"
        try:
            task = Task.from_json(data.get("task"))
        except GemelError as exc:
            raise DeploymentError(f"{where}: {exc}") from None
        return cls(
            name=_field(data, "name", str, where), model=_field(data, "model", str, where), task=task,
            camera=CameraFeed.from_json(data.get("camera")), slo_ms=_field(data, "slo_ms", (int, float), where),
        )


@dataclass(frozen=True)
class DeploymentSpec:
    """What the server wants an edge node to serve: the protocol's ``desired`` object without its bundle."""

    # Server-side deployment id.
    deployment: int
    queries: tuple[QuerySpec, ...]
    # Device memory budget in bytes; None leaves the node's own budget (or no limit).
    budget_bytes: int | None
    # Scheduler name (``merged``, ``time-sharing``, ``space-sharing``).
    scheduler: str = "merged"

    def __post_init__(self) -> None:
        if isinstance(self.deployment, bool) or not isinstance(self.deployment, int) or self.deployment < 0:
            raise DeploymentError(f"deployment id must be an integer >= 0, got {self.deployment!r}")
        object.__setattr__(self, "queries", tuple(self.queries))
        if not self.queries:
            raise DeploymentError(f"deployment {self.deployment}: it has no queries")
        names = [query.name for query in self.queries]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DeploymentError(f"deployment {self.deployment}: query names repeat: {', '.join(repeated)}")
        cameras: dict[str, CameraFeed] = {}
        for query in self.queries:
            seen = cameras.setdefault(query.camera.name, query.camera)
            if seen != query.camera:
                raise DeploymentError(
                    f"deployment {self.deployment}: camera {query.camera.name!r} is described two different ways"
                )
        budget = self.budget_bytes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise DeploymentError(f"deployment {self.deployment}: budget_bytes must be a positive integer or null")
        if self.scheduler not in list_schedulers():
            known = ", ".join(list_schedulers())
            raise DeploymentError(f"deployment {self.deployment}: unknown scheduler {self.scheduler!r}; known: {known}")

    @property
    def cameras(self) -> dict[str, CameraFeed]:
        """Return the deployment's cameras by name."""
        return {query.camera.name: query.camera for query in self.queries}

    @classmethod
    def from_json(cls, data: dict) -> DeploymentSpec:
        """Return the spec of the protocol's ``desired`` object (its ``bundle`` key is ignored).

        Raises:
            DeploymentError: missing or malformed fields, repeated names, an unknown scheduler.
        """
        if not isinstance(data, dict):
            raise DeploymentError(f"desired deployment must be an object, got {type(data).__name__}")
        deployment = data.get("deployment")
        queries = data.get("queries")
        if not isinstance(queries, list):
            raise DeploymentError(f"deployment {deployment!r}: 'queries' must be a list")
        scheduler = data.get("scheduler", "merged")
        if not isinstance(scheduler, str):
            raise DeploymentError(f"deployment {deployment!r}: 'scheduler' must be a string")
        return cls(
            deployment=deployment,  # type: ignore[arg-type]
            queries=tuple(QuerySpec.from_json(query) for query in queries),
            budget_bytes=data.get("budget_bytes"),
            scheduler=scheduler,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's ``desired`` object without ``bundle``."""
        return {
            "deployment": self.deployment, "budget_bytes": self.budget_bytes, "scheduler": self.scheduler,
            "queries": [query.to_json() for query in self.queries],
        }
