"""The edge server: deployments prepared beside the active one, switched atomically, served in the background.

The network agent (``gemel_engine.runtime.agent``) drives an ``EdgeServer``: it turns the server's desired
state (docs/agent-protocol.md) into a ``DeploymentSpec``, calls ``prepare`` on the downloaded bundle,
``warm_up``, then ``activate``; any failure before ``activate`` leaves the active deployment serving.
``metrics_snapshot`` gives the protocol's ``metrics`` body (less ``node`` and ``at``) and
``prometheus_registry`` the same figures for a Prometheus scrape.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from gemel_engine.bundle import load_bundle
from gemel_engine.data.frames import CameraSource, Frame
from gemel_engine.data.sampling import resize_frame
from gemel_engine.data.sources import open_source
from gemel_engine.errors import DeploymentError, GemelError, RuntimeBudgetError
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import Clock, RealClock
from gemel_engine.runtime.executor import Executor, untie
from gemel_engine.runtime.gpu import gpu_memory
from gemel_engine.runtime.metrics import PrometheusCollector, RuntimeMetrics
from gemel_engine.runtime.protocol import CameraFeed, DeploymentSpec
from gemel_engine.runtime.scheduler import CameraFrame, RuntimeQuery, ScheduleLoop, get_scheduler
from gemel_engine.runtime.swap import find_units
from gemel_engine.train import resolve_device

_IDLE_WAIT_SECONDS = 0.05


class _Camera:
    """A feed being pulled: the source, its frame iterator (restarted at the end of a clip) and its schedule."""

    def __init__(self, feed: CameraFeed) -> None:
        self.feed = feed
        try:
            self.source: CameraSource = open_source(feed.source, fps=feed.fps)
            self._frames: Iterator[Frame] = self.source.frames_from(feed.start_frame)
            self.first = self.read()
        except GemelError as exc:
            raise DeploymentError(f"camera {feed.name!r} is unreachable: {exc}") from None
        self.index = 0
        self.next_due = 0.0

    def read(self) -> Frame:
        """Return the source's next frame resized to the feed's size (a finished clip starts again at the feed's
        start frame, or at its first frame when the clip is shorter than that)."""
        try:
            frame = next(self._frames)
        except StopIteration:
            frame = None
            for start in dict.fromkeys((self.feed.start_frame, 0)):
                self._frames = self.source.frames_from(start)
                frame = next(self._frames, None)
                if frame is not None:
                    break
            if frame is None:
                raise DeploymentError(f"camera {self.feed.name!r} delivers no frames") from None
        image, boxes = resize_frame(frame.image, frame.boxes, (self.feed.width, self.feed.height))
        return Frame(frame.index, frame.timestamp, image, boxes)

    def close(self) -> None:
        self.source.close()


@dataclass(eq=False)
class PreparedDeployment:
    """A bundle loaded and validated beside the active deployment, ready to warm up and activate."""

    spec: DeploymentSpec
    bundle_dir: Path
    # Weight bytes resident once prepared (unique storage: a shared tensor counts once).
    resident_bytes: int
    executor: Executor = field(repr=False)
    loop: ScheduleLoop = field(repr=False)
    metrics: RuntimeMetrics = field(repr=False)
    cameras: dict[str, _Camera] = field(repr=False, default_factory=dict)
    # Held while a batch runs, so a deployment is released only between batches.
    lock: threading.Lock = field(repr=False, default_factory=threading.Lock)
    released: bool = False

    def release(self) -> None:
        """Close the cameras and free the device memory (idempotent)."""
        with self.lock:
            if self.released:
                return
            self.released = True
            for camera in self.cameras.values():
                camera.close()
            self.executor.close()


class EdgeServer:
    """Serves one active deployment at a time on one device, under a memory budget."""

    def __init__(self, *, device: str = "auto", budget_bytes: int | None = None, clock: Clock | None = None) -> None:
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)
                                         or budget_bytes <= 0):
            raise DeploymentError(f"budget_bytes must be a positive integer or None, got {budget_bytes!r}")
        try:
            self.device = resolve_device(device)
        except GemelError as exc:
            raise DeploymentError(str(exc)) from None
        self.budget_bytes = budget_bytes
        self.clock = clock or RealClock()
        self._active: PreparedDeployment | None = None
        self._switch = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(PrometheusCollector(self.metrics_snapshot))

    def device_info(self) -> dict[str, Any]:
        """Return the protocol's ``device`` object (on the CPU, the memory is the budget)."""
        if self.device.type == "cuda":
            memory = gpu_memory(self.device.index or 0)
            name = memory.name if memory is not None else "cuda"
            total = memory.total_bytes if memory is not None else None
            return {"kind": "cuda", "name": name, "memory_total_bytes": total}
        cores = os.cpu_count() or 1
        return {"kind": "cpu", "name": f"{platform.machine() or 'CPU'}, {cores} cores (simulated device)",
                "memory_total_bytes": self.budget_bytes}

    def _budget(self, spec: DeploymentSpec, executor_total: int) -> MemoryBudget:
        given = [b for b in (self.budget_bytes, spec.budget_bytes) if b is not None]
        return MemoryBudget(min(given) if given else max(1, executor_total))

    def prepare(self, bundle_dir: Path, spec: DeploymentSpec) -> PreparedDeployment:
        """Load the bundle and check every query's model, the budget and the cameras, beside the active deployment.

        Returns:
            The prepared deployment (not yet serving).

        Raises:
            DeploymentError: the bundle is refused, a query's model is not in it, the models do not fit the
                budget under the spec's scheduler, or a camera cannot be opened. The active deployment is
                untouched.
        """
        where = f"deployment {spec.deployment}"
        try:
            bundle = load_bundle(bundle_dir, device="cpu")
        except GemelError as exc:
            raise DeploymentError(f"{where}: bundle refused: {exc}") from None
        available = bundle.models.as_dict()
        missing = sorted({q.model for q in spec.queries} - set(available))
        if missing:
            raise DeploymentError(f"{where}: the bundle has no model {', '.join(missing)} (it has {sorted(available)})")
        scheduler = get_scheduler(spec.scheduler)
        models = {name: available[name] for name in dict.fromkeys(q.model for q in spec.queries)}
        if not scheduler.merged:
            models = untie(models)
        cameras: dict[str, _Camera] = {}
        executor = None
        try:
            total = sum(unit.nbytes for unit in find_units(models)[0].values())
            executor = Executor(
                models, budget=self._budget(spec, total), device=self.device, clock=self.clock,
                keep_shared=scheduler.keep_shared,
            )
            scheduler.prepare(executor)
            for name, feed in spec.cameras.items():
                cameras[name] = _Camera(feed)
            queries = [
                RuntimeQuery(q.name, q.model, q.task, q.camera.name, q.slo_ms / 1000) for q in spec.queries
            ]
            metrics = RuntimeMetrics(
                {q.name: q.task for q in spec.queries}, memory=executor.memory, now=self.clock.now,
                simulated=executor.simulated, deployment=spec.deployment,
            )
            loop = ScheduleLoop(executor, queries, scheduler, metrics)
        except GemelError as exc:
            for camera in cameras.values():
                camera.close()
            if executor is not None:
                executor.close()
            message = f"out of budget: {exc}" if isinstance(exc, RuntimeBudgetError) else str(exc)
            raise DeploymentError(f"{where}: {message}") from None
        return PreparedDeployment(
            spec=spec, bundle_dir=Path(bundle_dir), resident_bytes=executor.swap.residency.resident_bytes,
            executor=executor, loop=loop, metrics=metrics, cameras=cameras,
        )

    def warm_up(self, prepared: PreparedDeployment) -> None:
        """Run one forward pass per query on its camera's first frame (not counted in the metrics).

        Raises:
            DeploymentError: a forward pass fails (the active deployment is untouched).
        """
        with prepared.lock:
            for query in prepared.spec.queries:
                frame = prepared.cameras[query.camera.name].first
                try:
                    prepared.executor.infer(query.model, frame.image[np.newaxis], query.task)
                except (GemelError, RuntimeError, ValueError) as exc:
                    raise DeploymentError(
                        f"deployment {prepared.spec.deployment}: warm-up of {query.name!r} failed: {exc}"
                    ) from None

    def activate(self, prepared: PreparedDeployment) -> None:
        """Switch serving to ``prepared`` at once; the previous deployment serves until then, and is released after.

        Raises:
            DeploymentError: ``prepared`` was already released.
        """
        if prepared.released:
            raise DeploymentError(f"deployment {prepared.spec.deployment} was released and cannot be activated")
        with self._switch:
            old, self._active = self._active, prepared
            now = self.clock.now()
            prepared.metrics.started = now
            for camera in prepared.cameras.values():
                camera.next_due = now
        if old is not None and old is not prepared:
            old.release()

    @property
    def active(self) -> PreparedDeployment | None:
        """Return the deployment being served, or None."""
        return self._active

    def start(self) -> None:
        """Start the background thread that pulls camera frames at their fps through the scheduler."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="gemel-edge-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the serving thread (the active deployment stays loaded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop serving and release the active deployment."""
        self.stop()
        with self._switch:
            old, self._active = self._active, None
        if old is not None:
            old.release()

    @property
    def serving(self) -> bool:
        """Return whether the serving thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            deployment = self._active
            if deployment is None:
                self._stop.wait(_IDLE_WAIT_SECONDS)
                continue
            with deployment.lock:
                if deployment.released or deployment is not self._active:
                    continue
                try:
                    busy = self._serve_once(deployment)
                except GemelError as exc:  # a camera that fails mid-stream: report and keep going
                    self.last_error = str(exc)
                    busy = False
            if not busy:
                due = min(camera.next_due for camera in deployment.cameras.values())
                self.clock.wait_until(min(due, self.clock.now() + _IDLE_WAIT_SECONDS), self._stop)

    def _serve_once(self, deployment: PreparedDeployment) -> bool:
        now = self.clock.now()
        for camera in deployment.cameras.values():
            while camera.next_due <= now:
                frame = camera.read()
                deployment.loop.offer(
                    CameraFrame(camera.feed.name, camera.index, camera.next_due, frame.image, frame.boxes)
                )
                camera.index += 1
                camera.next_due += 1 / camera.feed.fps
        return deployment.loop.step()

    def metrics_snapshot(self) -> dict[str, Any]:
        """Return the protocol's ``metrics`` body less ``node`` and ``at``: deployment, simulated, memory, queries."""
        deployment = self._active
        if deployment is not None:
            return deployment.metrics.snapshot()
        gpu = gpu_memory(self.device.index or 0) if self.device.type == "cuda" else None
        return {
            "deployment": None,
            "simulated": self.device.type != "cuda",
            "memory": {
                "budget_bytes": self.budget_bytes, "resident_bytes": 0, "shared_bytes": 0, "per_model_bytes": {},
                "swapped_bytes_total": 0, "gpu": None if gpu is None else gpu.to_json(),
            },
            "queries": {},
        }

    def prometheus_registry(self) -> CollectorRegistry:
        """Return a registry whose collector reads ``metrics_snapshot`` at each scrape."""
        return self._registry

