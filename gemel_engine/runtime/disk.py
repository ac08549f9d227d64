"""The disk tier: a real swap tier on a machine without a GPU.

The resident set lives in host memory; every other unit lives only on disk. When the executor is made, the
units' tensors are written once to a safetensors file (the weight file of this tier, fsynced so its pages are
clean) and released from memory. Loading a unit first drops its byte ranges from the operating system's page
cache (``posix_fadvise(POSIX_FADV_DONTNEED)``), then reads them into freshly allocated tensors; evicting
points the tensors at empty placeholders, so the memory really is given back. Every transfer time is the
measured time of that read, nothing is modelled: this is also what a box whose memory cannot hold every
model does when it serves from its disk.

Loads are synchronous (they do not overlap compute), so the pipeline a simulator must model for this tier is
load, then compute (``overlaps_compute`` is false).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from gemel_engine.errors import RuntimeConfigError
from gemel_engine.runtime.budget import UnitInfo
from gemel_engine.runtime.swap import BandwidthModel, Mover

WEIGHT_FILE = "units.safetensors"
_HEADER_LENGTH = struct.Struct("<Q")


def drop_page_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to forget the cached pages of ``length`` bytes of ``fd`` from ``offset`` (0: to the end).

    Raises:
        RuntimeConfigError: the platform has no ``posix_fadvise`` (the disk tier needs Linux or another POSIX).
    """
    if not hasattr(os, "posix_fadvise"):
        raise RuntimeConfigError("the disk tier needs os.posix_fadvise, which this platform lacks")
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _tensor_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Return name → (absolute byte offset, byte length) of every tensor in the safetensors file at ``path``."""
    with path.open("rb") as handle:
        (length,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
        header = json.loads(handle.read(length))
    start = _HEADER_LENGTH.size + length
    return {
        name: (start + entry["data_offsets"][0], entry["data_offsets"][1] - entry["data_offsets"][0])
        for name, entry in header.items()
        if name != "__metadata__"
    }


class DiskMover(Mover):
    """Units read from a weight file on disk, page cache dropped first; every transfer is a measured read."""

    simulated = False
    overlaps_compute = False

    def __init__(
        self, units: Mapping[str, UnitInfo], tensors: Mapping[str, list[torch.Tensor]], folder: Path | None = None
    ) -> None:
        """Write the units' tensors to a weight file in ``folder`` (a new temporary folder by default) and release
        them from memory.

        Raises:
            RuntimeConfigError: the platform cannot drop pages from the page cache.
        """
        from safetensors.torch import save_file

        if not hasattr(os, "posix_fadvise"):
            raise RuntimeConfigError("the disk tier needs os.posix_fadvise, which this platform lacks")
        self.units = units
        self._tensors = {key: list(held) for key, held in tensors.items()}
        self._owns_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="gemel-disk-tier-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / WEIGHT_FILE
        names = {key: f"u{index}" for index, key in enumerate(self._tensors)}
        stored = {
            f"{names[key]}.{position}": tensor.detach().to("cpu").contiguous()
            for key, held in self._tensors.items()
            for position, tensor in enumerate(held)
        }
        save_file(stored, str(self.path))
        offsets = _tensor_offsets(self.path)
        self._layout = {
            key: [(*offsets[f"{names[key]}.{position}"], tensor.dtype, tuple(tensor.shape))
                  for position, tensor in enumerate(held)]
            for key, held in self._tensors.items()
        }
        self._fd = os.open(self.path, os.O_RDONLY)
        os.fsync(self._fd)  # clean pages: only clean pages can be dropped from the cache
        self.evict(list(self._tensors))
        self.reads: list[tuple[int, float]] = []

    def _read(self, key: str) -> float:
        started = time.perf_counter()
        for (offset, length, dtype, shape), tensor in zip(self._layout[key], self._tensors[key], strict=True):
            drop_page_cache(self._fd, offset, length)
            raw = torch.empty(length, dtype=torch.uint8)
            if length:
                got = os.preadv(self._fd, [raw.numpy()], offset)
                if got != length:
                    raise RuntimeConfigError(f"{self.path}: short read of unit {key} ({got} of {length} bytes)")
            tensor.data = raw.view(dtype).reshape(shape)
        seconds = time.perf_counter() - started
        self.reads.append((self.units[key].nbytes, seconds))
        return seconds

    def load(self, keys: Sequence[str]) -> list[float]:
        """Read ``keys`` from disk, in order, after dropping their pages; return each read's measured seconds."""
        return [self._read(key) for key in keys]

    def evict(self, keys: Sequence[str]) -> None:
        """Point the units' tensors at empty placeholders: their memory is released."""
        for key in keys:
            for tensor in self._tensors[key]:
                tensor.data = torch.empty(0, dtype=tensor.dtype)

    def close(self) -> None:
        """Close the weight file and delete it (with its folder when the mover made it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


def fit_bandwidth(loads: Sequence[tuple[int, int, float]]) -> BandwidthModel:
    """Return the transfer model ``seconds = units × latency + bytes / bandwidth`` fitted by least squares to
    measured loads, each ``(units, bytes, seconds)``: a whole model's units read one after the other, as the
    executor loads them, so the fit gets right what a schedule depends on (a model's load time), the many small
    layers' fixed cost as well as the large ones' bandwidth. The latency is clipped at 0.

    Raises:
        RuntimeConfigError: too few loads to fit, or the fit gives no positive bandwidth.
    """
    rows = np.array([[float(units), float(nbytes)] for units, nbytes, _ in loads])
    seconds = np.array([float(s) for _, _, s in loads])
    if len(loads) < 2 or np.linalg.matrix_rank(rows) < 2:
        raise RuntimeConfigError("fitting a transfer model needs loads of at least two different shapes")
    (latency, per_byte), *_ = np.linalg.lstsq(rows, seconds, rcond=None)
    if latency < 0:  # refit on the bytes alone
        latency, per_byte = 0.0, float(rows[:, 1] @ seconds / (rows[:, 1] @ rows[:, 1]))
    if not per_byte > 0:
        raise RuntimeConfigError(f"the measured loads give no positive bandwidth ({per_byte:.3g} s/byte)")
    return BandwidthModel(bytes_per_second=float(1 / per_byte), latency_seconds=float(latency))


def calibrate_disk_tier(
    units: Mapping[str, UnitInfo], tensors: Mapping[str, list[torch.Tensor]], *, repeats: int = 3,
    folder: Path | None = None,
) -> tuple[BandwidthModel, dict[str, float]]:
    """Measure, on a disk tier of its own, the load of every model's units (``repeats`` rounds, page cache dropped
    before each read) and fit the transfer model a simulator of that tier should use.

    The tensors are copied first, so the caller's models keep their weights.

    Returns:
        The fitted model and a summary: loads, unit reads, median seconds per MiB, and the fit's median relative
        error on a model's load time.

    Raises:
        RuntimeConfigError: bad ``repeats``, or the loads cannot be fitted.
    """
    if repeats < 1:
        raise RuntimeConfigError(f"repeats must be at least 1, got {repeats}")
    by_model: dict[str, list[str]] = {}
    for key, unit in units.items():
        for model in sorted(unit.models):
            by_model.setdefault(model, []).append(key)
    copies = {key: [t.detach().clone() for t in held] for key, held in tensors.items()}
    mover = DiskMover(units, copies, folder=folder)
    loads: list[tuple[int, int, float]] = []
    try:
        for _ in range(repeats):
            for keys in by_model.values():
                seconds = sum(mover.load(keys))
                mover.evict(keys)
                loads.append((len(keys), sum(units[key].nbytes for key in keys), seconds))
        reads = list(mover.reads)
    finally:
        mover.close()
    # The unit reads join the fit: models of one architecture alone would leave units and bytes proportional.
    model = fit_bandwidth([*loads, *((1, nbytes, seconds) for nbytes, seconds in reads)])
    errors = [abs(count * model.latency_seconds + nbytes / model.bytes_per_second - s) / s
              for count, nbytes, s in loads if s > 0]
    return model, {
        "loads": len(loads),
        "reads": len(reads),
        "median_seconds_per_mib": statistics.median(s / n * (1 << 20) for n, s in reads if n > 0),
        "fit_median_relative_error": statistics.median(errors) if errors else 0.0,
    }
