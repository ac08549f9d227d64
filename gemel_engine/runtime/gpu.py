"""Device memory as NVIDIA's driver reports it (pynvml from nvidia-ml-py), or a clean "no GPU"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

NO_GPU = "no GPU"


@dataclass(frozen=True)
class GpuMemory:
    """Memory of one NVIDIA GPU, in bytes."""

    # Device name as the driver reports it.
    name: str
    # Bytes in use on the device, by every process.
    used_bytes: int
    # Bytes the device has.
    total_bytes: int
    # Bytes this process holds on the device (None when the driver does not say).
    process_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        """Return the protocol's ``memory.gpu`` object."""
        return {"used_bytes": self.used_bytes, "total_bytes": self.total_bytes, "process_bytes": self.process_bytes}


def gpu_memory(index: int = 0) -> GpuMemory | None:
    """Return the memory of GPU ``index``, or None when pynvml, its driver or the GPU is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        process_bytes = None
        try:
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid():
                    process_bytes = int(process.usedGpuMemory or 0)
        except pynvml.NVMLError:
            process_bytes = None
        return GpuMemory(
            name=name.decode() if isinstance(name, bytes) else str(name),
            used_bytes=int(info.used), total_bytes=int(info.total), process_bytes=process_bytes,
        )
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
