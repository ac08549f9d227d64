"""Offline runs: a workload's held-out test frames replayed as camera streams on a virtual clock, and their report.

Each camera's test frames (the latest ones, labelled, never trained on nor read by the merge search) are
delivered at ``fps``;
every query of the workload watches its camera with the same SLO. ``serve_offline`` runs such a stream
through an executor and a scheduler and returns the per-query figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from gemel_engine.runtime.executor import Executor
from gemel_engine.runtime.metrics import RuntimeMetrics
from gemel_engine.runtime.scheduler import (
    DEFAULT_MAX_BATCH,
    CameraFrame,
    RuntimeQuery,
    ScheduleLoop,
    Scheduler,
    run_frames,
)
from gemel_engine.workload import Workload, camera_frames


def workload_stream(
    workload: Workload, *, fps: float, slo_ms: float, max_frames: int | None = None, max_batch: int = DEFAULT_MAX_BATCH,
    min_seconds: float = 0.0,
) -> tuple[list[RuntimeQuery], list[CameraFrame]]:
    """Return the workload's queries (model named like the query) and its cameras' held-out test frames at ``fps``.

    A camera whose test frames last less than ``min_seconds`` at ``fps`` plays them again from the start until
    the stream lasts that long (so a warm-up is a small part of any run).

    Raises:
        SourceError: a camera cannot be read.
    """
    queries = [
        RuntimeQuery(entry.name, entry.name, entry.query.task, entry.query.camera, slo_ms / 1000, max_batch)
        for entry in workload.queries
    ]
    frames = []
    for camera in workload.cameras:
        test = camera_frames(workload, camera).test
        count = len(test) if max_frames is None else min(len(test), max_frames)
        total = max(count, math.ceil(min_seconds * fps))
        frames.extend(
            CameraFrame(camera.name, index, index / fps, test.images[index % count], test.boxes[index % count])
            for index in range(total)
        )
    return queries, frames


def serve_offline(
    executor: Executor, queries: Sequence[RuntimeQuery], frames: Sequence[CameraFrame], scheduler: Scheduler
) -> dict[str, Any]:
    """Run ``frames`` through ``scheduler`` on ``executor`` (whose clock should be virtual) and report.

    Returns:
        ``summarise``'s report of the run.

    Raises:
        RuntimeBudgetError: the scheduler's resident set does not fit the executor's budget.
    """
    metrics = RuntimeMetrics(
        {query.name: query.task for query in queries}, memory=executor.memory, now=executor.clock.now,
        simulated=executor.simulated, window=max(1, len(frames)),
    )
    start = executor.clock.now()  # the stream starts now: what prepare loads is charged inside it
    scheduler.prepare(executor)
    loop = ScheduleLoop(executor, queries, scheduler, metrics)
    run_frames(loop, frames)
    last_arrival = max((frame.arrival for frame in frames), default=0.0)
    return summarise(metrics, executor, duration=max(last_arrival - start, 1e-9), batches=loop.batches)


def summarise(metrics: RuntimeMetrics, executor: Executor, *, duration: float, batches: int) -> dict[str, Any]:
    """Return per-query figures (fps over ``duration``, latency, drops, effective accuracy), their means,
    and the bytes swapped per second."""
    queries = {}
    for name, query in metrics.queries.items():
        p50, p95 = query.latency_quantile(0.5), query.latency_quantile(0.95)
        queries[name] = {
            "frames_total": query.frames_total, "dropped_total": query.dropped_total,
            "drop_rate": query.drop_rate, "fps": query.processed_total / duration,
            "latency_p50_ms": None if p50 is None else p50 * 1000,
            "latency_p95_ms": None if p95 is None else p95 * 1000,
            "effective_accuracy": query.effective_accuracy(),
        }
    accuracies = [q["effective_accuracy"] for q in queries.values() if q["effective_accuracy"] is not None]
    frames = sum(q["frames_total"] for q in queries.values())
    return {
        "simulated": executor.simulated,
        "duration_seconds": duration,
        "batches": batches,
        "drop_rate": sum(q["dropped_total"] for q in queries.values()) / frames if frames else 0.0,
        "mean_effective_accuracy": statistics.fmean(accuracies) if accuracies else None,
        "swapped_bytes": executor.swap.stats.loaded_bytes,
        "swapped_bytes_per_second": executor.swap.stats.loaded_bytes / duration,
        "peak_resident_bytes": executor.swap.residency.peak_bytes,
        "budget_bytes": executor.swap.budget.capacity_bytes,
        "queries": queries,
    }
