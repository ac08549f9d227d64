"""Per-query counters, latency quantiles and effective accuracy, a JSON snapshot and a Prometheus collector.

Effective accuracy pairs every frame, processed or dropped, with the result the query holds for it: its
own for a processed frame, the last result for a dropped one (before any result, none: wrong for a
classification task, no boxes for detection). It is scored with the task's metric against the frame's
label (top-1 or mAP@0.5), over the latest ``window`` frames.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gemel_engine.queries import Target, Task, score

DEFAULT_WINDOW = 2000
FPS_WINDOW_SECONDS = 10.0


def _empty_like(task: Task) -> Target:
    if task.is_detection:
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    return -1


class QueryMetrics:
    """Counters of one query; thread-safe."""

    def __init__(self, name: str, task: Task, *, window: int = DEFAULT_WINDOW) -> None:
        self.name = name
        self.task = task
        self.frames_total = 0
        self.processed_total = 0
        self.dropped_total = 0
        self.latencies: deque[float] = deque(maxlen=window)
        self.pairs: deque[tuple[Target, Target]] = deque(maxlen=window)
        self.completions: deque[float] = deque(maxlen=window)
        self.last_result: Target | None = None
        self.batches = 0
        self._lock = threading.Lock()

    def processed(self, result: Target, target: Target | None, *, latency: float, at: float) -> None:
        """Count a frame whose result ``result`` was ready ``latency`` seconds after it arrived, at time ``at``."""
        with self._lock:
            self.frames_total += 1
            self.processed_total += 1
            self.latencies.append(latency)
            self.completions.append(at)
            self.last_result = result
            if target is not None:
                self.pairs.append((result, target))

    def dropped(self, target: Target | None) -> None:
        """Count a dropped frame; it reuses the last result for accuracy."""
        with self._lock:
            self.frames_total += 1
            self.dropped_total += 1
            if target is not None:
                reused = self.last_result if self.last_result is not None else _empty_like(self.task)
                self.pairs.append((reused, target))

    def effective_accuracy(self) -> float | None:
        """Return the task's metric over the window's (result, label) pairs, or None without labels."""
        with self._lock:
            pairs = list(self.pairs)
        if not pairs:
            return None
        return score([p for p, _ in pairs], [t for _, t in pairs], self.task)

    def latency_quantile(self, q: float) -> float | None:
        """Return the ``q`` quantile of the window's latencies in seconds, or None before any."""
        with self._lock:
            values = list(self.latencies)
        return float(np.quantile(values, q)) if values else None

    def fps(self, now: float, *, over: float = FPS_WINDOW_SECONDS, since: float = 0.0) -> float:
        """Return the processed frames per second over the last ``over`` seconds to ``now``, not before ``since``."""
        with self._lock:
            recent = sum(1 for at in self.completions if now - over < at <= now)
        span = min(over, now - since)
        return recent / span if span > 0 else 0.0

    @property
    def drop_rate(self) -> float:
        """Return dropped / total frames (0 before any frame)."""
        return self.dropped_total / self.frames_total if self.frames_total else 0.0

    def snapshot(self, now: float, *, fps_over: float = FPS_WINDOW_SECONDS, since: float = 0.0) -> dict[str, Any]:
        """Return the protocol's per-query metrics object (latencies in milliseconds; fps counted from ``since``)."""
        p50, p95 = self.latency_quantile(0.5), self.latency_quantile(0.95)
        accuracy = self.effective_accuracy()
        return {
            "fps": round(self.fps(now, over=fps_over, since=since), 3),
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "latency_p95_ms": None if p95 is None else round(p95 * 1000, 3),
            "frames_total": self.frames_total,
            "dropped_total": self.dropped_total,
            "drop_rate": round(self.drop_rate, 6),
            "effective_accuracy": None if accuracy is None else round(accuracy, 6),
        }


class RuntimeMetrics:
    """Every query's counters plus a memory source; renders the protocol's metrics body and Prometheus."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        *,
        memory: Callable[[], dict[str, Any]],
        now: Callable[[], float],
        simulated: bool,
        deployment: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.queries = {name: QueryMetrics(name, task, window=window) for name, task in tasks.items()}
        self.memory = memory
        self.now = now
        self.simulated = simulated
        self.deployment = deployment
        # Clock time the counting started (a deployment's activation); fps is not averaged over earlier time.
        self.started = 0.0

    def __getitem__(self, query: str) -> QueryMetrics:
        return self.queries[query]

    def snapshot(self) -> dict[str, Any]:
        """Return ``{"deployment", "simulated", "memory", "queries"}`` as docs/agent-protocol.md defines them."""
        now = self.now()
        return {
            "deployment": self.deployment,
            "simulated": self.simulated,
            "memory": self.memory(),
            "queries": {name: query.snapshot(now, since=self.started) for name, query in self.queries.items()},
        }


class PrometheusCollector(Collector):
    """Reads a metrics snapshot at scrape time and exposes it with units in the metric names."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of the current snapshot (nothing but the budget when idle)."""
        data = self._snapshot()
        if data is None:
            return
        memory = data["memory"]
        budget = GaugeMetricFamily("gemel_budget_bytes", "Device memory budget of the runtime.")
        budget.add_metric([], float(memory.get("budget_bytes") or 0))
        yield budget
        resident = GaugeMetricFamily(
            "gemel_resident_bytes", "Weight bytes resident on the device (unique storage).", labels=["kind"]
        )
        resident.add_metric(["shared"], float(memory["shared_bytes"]))
        resident.add_metric(["per_model"], float(memory["resident_bytes"] - memory["shared_bytes"]))
        yield resident
        per_model = GaugeMetricFamily(
            "gemel_model_resident_bytes", "Resident bytes of each model's own (unshared) layers.", labels=["model"]
        )
        for model, value in sorted(memory["per_model_bytes"].items()):
            per_model.add_metric([model], float(value))
        yield per_model
        swapped = CounterMetricFamily("gemel_swapped_bytes", "Bytes copied to the device by swapping.")
        swapped.add_metric([], float(memory["swapped_bytes_total"]))
        yield swapped
        simulated = GaugeMetricFamily("gemel_transfer_simulated", "1 when transfer times are simulated (CPU).")
        simulated.add_metric([], 1.0 if data["simulated"] else 0.0)
        yield simulated
        gpu = memory.get("gpu")
        if gpu is not None:
            for key, help_text in (("used_bytes", "in use by every process"), ("total_bytes", "of the device"),
                                   ("process_bytes", "held by this process")):
                if gpu.get(key) is not None:
                    family = GaugeMetricFamily(f"gemel_gpu_memory_{key}", f"GPU memory {help_text} (pynvml).")
                    family.add_metric([], float(gpu[key]))
                    yield family
        yield from _query_families(data["queries"])


def _query_families(queries: Mapping[str, dict[str, Any]]) -> Iterator[Any]:
    frames = CounterMetricFamily("gemel_query_frames", "Frames delivered to the query.", labels=["query"])
    dropped = CounterMetricFamily("gemel_query_frames_dropped", "Frames dropped (deadline missed).", labels=["query"])
    fps = GaugeMetricFamily("gemel_query_processed_frames_per_second", "Frames processed per second.", labels=["query"])
    accuracy = GaugeMetricFamily(
        "gemel_query_effective_accuracy_ratio", "Accuracy counting dropped frames with the last result.",
        labels=["query"],
    )
    latency = GaugeMetricFamily(
        "gemel_query_latency_seconds", "Frame latency quantiles (arrival to result).", labels=["query", "quantile"]
    )
    for name, query in sorted(queries.items()):
        frames.add_metric([name], float(query["frames_total"]))
        dropped.add_metric([name], float(query["dropped_total"]))
        fps.add_metric([name], float(query["fps"]))
        if query["effective_accuracy"] is not None:
            accuracy.add_metric([name], float(query["effective_accuracy"]))
        for quantile, key in (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms")):
            if query[key] is not None:
                latency.add_metric([name, quantile], query[key] / 1000)
    yield from (frames, dropped, fps, accuracy, latency)


__all__ = ["PrometheusCollector", "QueryMetrics", "RuntimeMetrics"]
