"""Per-layer profiles measured on the device: compute latency per layer and batch size, and load time.

A layer's compute time is measured with forward hooks as the time from the previous layer's end to its
own end, so the operations between layers (activations, pooling) are counted and the layers add up to
the whole forward pass. Load time is the host-to-device copy of the layer's tensors: measured from
pinned memory on CUDA, or given by the bandwidth model on the CPU (then ``load_simulated`` is true).

Profiles depend on the architecture, not the weights, and are cached as JSON keyed by architecture,
builder arguments, device, input size and batch sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gemel_engine import zoo
from gemel_engine.bundle import ModelRecipe
from gemel_engine.errors import RuntimeConfigError
from gemel_engine.fileio import read_versioned_json, write_json_atomically
from gemel_engine.memory import unique_storage_bytes
from gemel_engine.queries import images_to_tensor
from gemel_engine.runtime.swap import BandwidthModel, unit_tensors

PROFILE_VERSION = 1
DEFAULT_BATCH_SIZES = (1, 4)


@dataclass(frozen=True)
class LayerProfile:
    """One layer (a module owning tensors) of a profiled model."""

    # Module path inside the model.
    path: str
    # Bytes of the tensors the module owns directly.
    nbytes: int
    # Seconds from the previous layer's end to this layer's end, per profiled batch size.
    compute_seconds: tuple[float, ...]
    # Seconds to copy the layer's tensors to the device.
    load_seconds: float


@dataclass(frozen=True)
class ModelProfile:
    """Per-layer latency and load time of one architecture on one device, at one input size."""

    arch: str
    # Zoo builder arguments (num_classes...).
    builder_args: Mapping[str, Any]
    # Device description (``cpu: ...`` or the GPU's name).
    device: str
    # Input (width, height) in pixels.
    input_size: tuple[int, int]
    # Batch sizes measured, increasing.
    batch_sizes: tuple[int, ...]
    # Layers in execution order (layers never called come last, with zero compute).
    layers: tuple[LayerProfile, ...]
    # True when load times come from the CPU bandwidth model rather than measured copies.
    load_simulated: bool
    # Largest single activation seen at the largest batch, in bytes (a floor for the budget's reserve).
    activation_bytes: int = 0
    # Free-form details (torch version, repeats).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = tuple(int(b) for b in self.batch_sizes)
        if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise RuntimeConfigError(f"profile batch sizes must be increasing positive integers, got {sizes}")
        object.__setattr__(self, "batch_sizes", sizes)
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "layers", tuple(self.layers))
        for layer in self.layers:
            if len(layer.compute_seconds) != len(sizes):
                raise RuntimeConfigError(f"layer {layer.path}: one compute time per batch size is required")

    def layer_seconds(self, batch: int) -> dict[str, float]:
        """Return each layer's compute seconds at ``batch``, linear between (and beyond) the measured sizes."""
        sizes = self.batch_sizes
        if len(sizes) == 1:
            return {layer.path: layer.compute_seconds[0] * batch / sizes[0] for layer in self.layers}
        hi = next((i for i, size in enumerate(sizes) if size >= batch), len(sizes) - 1)
        hi = max(hi, 1)
        lo = hi - 1
        weight = (batch - sizes[lo]) / (sizes[hi] - sizes[lo])
        out = {}
        for layer in self.layers:
            low, high = layer.compute_seconds[lo], layer.compute_seconds[hi]
            out[layer.path] = max(0.0, low + weight * (high - low))
        return out

    def compute_seconds(self, batch: int) -> float:
        """Return the whole forward pass's seconds at ``batch``."""
        return sum(self.layer_seconds(batch).values())

    @property
    def param_bytes(self) -> int:
        """Return the bytes of every layer's tensors."""
        return sum(layer.nbytes for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        """Return the profile as JSON-ready data."""
        return {
            "version": PROFILE_VERSION, "arch": self.arch, "builder_args": dict(self.builder_args),
            "device": self.device, "input_size": list(self.input_size), "batch_sizes": list(self.batch_sizes),
            "load_simulated": self.load_simulated, "activation_bytes": self.activation_bytes,
            "extra": dict(self.extra),
            "layers": [
                {"path": layer.path, "nbytes": layer.nbytes, "compute_seconds": list(layer.compute_seconds),
                 "load_seconds": layer.load_seconds}
                for layer in self.layers
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> ModelProfile:
        """Return the profile stored by ``to_json``.

        Raises:
            RuntimeConfigError: malformed data or another profile version.
        """
        if not isinstance(data, dict) or data.get("version") != PROFILE_VERSION:
            raise RuntimeConfigError("not a version-1 layer profile")
        try:
            return cls(
                arch=data["arch"], builder_args=data["builder_args"], device=data["device"],
                input_size=tuple(data["input_size"]), batch_sizes=tuple(data["batch_sizes"]),
                load_simulated=bool(data["load_simulated"]), activation_bytes=int(data["activation_bytes"]),
                extra=data.get("extra", {}),
                layers=tuple(
                    LayerProfile(
                        str(layer["path"]), int(layer["nbytes"]),
                        tuple(float(s) for s in layer["compute_seconds"]), float(layer["load_seconds"]),
                    )
                    for layer in data["layers"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeConfigError(f"malformed layer profile: {exc}") from None


def tensor_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return path → module for every module of ``model`` that owns tensors directly, in module order."""
    return {path: module for path, module in model.named_modules() if unit_tensors(module)}


class LayerTimer:
    """Forward hooks that time each layer (from the previous layer's end) and record the call order.

    With ``synchronize`` the hooks wait for the GPU before reading the time (profiling only: it costs).
    """

    def __init__(self, model: nn.Module, *, synchronize: bool = False) -> None:
        self.layers = tensor_layers(model)
        self.synchronize = synchronize
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []
        self._last = 0.0
        self._last_path: str | None = None

    def _now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _after(self, path: str) -> None:
        now = self._now()
        self.seconds[path] = self.seconds.get(path, 0.0) + now - self._last
        if path not in self.order:
            self.order.append(path)
        self._last = now
        self._last_path = path

    @contextmanager
    def measure(self) -> Iterator[LayerTimer]:
        """Time the forward passes run inside the block; yield the timer."""
        handles = [
            module.register_forward_hook(lambda _m, _i, _o, path=path: self._after(path))
            for path, module in self.layers.items()
        ]
        self.seconds, self.order, self._last_path = {}, [], None
        self._last = self._now()
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            if self._last_path is not None:
                self.seconds[self._last_path] += self._now() - self._last


def forward_images(model: nn.Module, images: np.ndarray, *, detection: bool) -> Any:
    """Run ``model`` on N×H×W×3 uint8 ``images`` (detectors take a list of images); return the raw output."""
    device = next(model.parameters()).device
    batch = images_to_tensor(images, device)
    with torch.no_grad():
        return model(list(batch)) if detection else model(batch)


def _activation_bytes(model: nn.Module, images: np.ndarray, detection: bool) -> int:
    largest = 0

    def seen(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [module.register_forward_hook(seen) for module in tensor_layers(model).values()]
    try:
        forward_images(model, images, detection=detection)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def _load_seconds(module: nn.Module, device: torch.device, repeats: int) -> float:
    pinned = [t.detach().to("cpu").pin_memory() for t in unit_tensors(module)]
    timings = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for tensor in pinned:
            tensor.to(device, non_blocking=True)
        torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def device_name(device: torch.device) -> str:
    """Return a description of ``device`` that tells machines apart (GPU name, or CPU and thread count)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()


def profile_model(
    model: nn.Module,
    *,
    arch: str,
    builder_args: Mapping[str, Any],
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 5,
    bandwidth: BandwidthModel | None = None,
) -> ModelProfile:
    """Measure ``model`` layer by layer on ``device`` (the median of ``repeats`` passes per batch size).

    Returns:
        The profile; layer loads are measured on CUDA and simulated by ``bandwidth`` on the CPU.

    Raises:
        RuntimeConfigError: bad batch sizes or repeats.
    """
    if repeats < 1:
        raise RuntimeConfigError(f"repeats must be at least 1, got {repeats}")
    device = torch.device(device)
    bandwidth = bandwidth or BandwidthModel()
    detection = zoo.get_spec(arch).task == "detection"
    model = model.to(device).eval()
    width, height = input_size
    rng = np.random.default_rng(0)
    timer = LayerTimer(model, synchronize=device.type == "cuda")
    per_batch: list[dict[str, float]] = []
    order: list[str] = []
    for batch in batch_sizes:
        images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        forward_images(model, images, detection=detection)  # warm-up
        runs = []
        for _ in range(repeats):
            with timer.measure():
                forward_images(model, images, detection=detection)
            runs.append(dict(timer.seconds))
            order = order or list(timer.order)
        per_batch.append({path: statistics.median(run.get(path, 0.0) for run in runs) for path in timer.layers})
    paths = [*order, *(path for path in timer.layers if path not in order)]
    layers = []
    for path in paths:
        module = timer.layers[path]
        nbytes = unique_storage_bytes(unit_tensors(module))
        load = _load_seconds(module, device, repeats) if device.type == "cuda" else bandwidth.seconds(nbytes)
        layers.append(LayerProfile(path, nbytes, tuple(run[path] for run in per_batch), load))
    largest = rng.integers(0, 256, (max(batch_sizes), height, width, 3), dtype=np.uint8)
    return ModelProfile(
        arch=arch, builder_args=dict(builder_args), device=device_name(device), input_size=(width, height),
        batch_sizes=tuple(batch_sizes), layers=tuple(layers), load_simulated=device.type != "cuda",
        activation_bytes=_activation_bytes(model, largest, detection),
        extra={"torch": torch.__version__, "repeats": repeats, "bandwidth": None if device.type == "cuda" else
               bandwidth.to_json()},
    )


def default_cache_dir() -> Path:
    """Return the profile cache folder: ``$GEMEL_CACHE_DIR/profiles`` or ``~/.cache/gemel/profiles``."""
    root = os.environ.get("GEMEL_CACHE_DIR")
    return Path(root) / "profiles" if root else Path.home() / ".cache" / "gemel" / "profiles"


def profile_key(
    recipe: ModelRecipe, *, device: torch.device, input_size: tuple[int, int], batch_sizes: Sequence[int],
    bandwidth: BandwidthModel,
) -> str:
    """Return the cache key of a profile: a digest of everything the measurement depends on."""
    material = {
        "version": PROFILE_VERSION, "arch": recipe.arch, "builder_args": dict(recipe.builder_args),
        "device": device_name(device), "input_size": list(input_size), "batch_sizes": list(batch_sizes),
        "torch": torch.__version__, "bandwidth": None if device.type == "cuda" else bandwidth.to_json(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def profile_recipe(
    recipe: ModelRecipe,
    *,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 5,
    bandwidth: BandwidthModel | None = None,
    cache_dir: Path | None = None,
) -> ModelProfile:
    """Return the profile of ``recipe``'s architecture, measured once and then read from the cache.

    Raises:
        RuntimeConfigError: bad batch sizes or repeats.
    """
    device = torch.device(device)
    bandwidth = bandwidth or BandwidthModel()
    folder = cache_dir or default_cache_dir()
    key = profile_key(recipe, device=device, input_size=input_size, batch_sizes=batch_sizes, bandwidth=bandwidth)
    path = folder / f"{recipe.arch}-{key}.json"
    if path.is_file():
        try:
            return ModelProfile.from_json(
                read_versioned_json(path, version=PROFILE_VERSION, what="layer profile", error=RuntimeConfigError))
        except RuntimeConfigError:
            path.unlink(missing_ok=True)  # a damaged cache entry is measured again
    profile = profile_model(
        recipe.build(device="cpu"), arch=recipe.arch, builder_args=recipe.builder_args, input_size=input_size,
        device=device, batch_sizes=batch_sizes, repeats=repeats, bandwidth=bandwidth,
    )
    write_json_atomically(path, profile.to_json(), indent=1)
    return profile
