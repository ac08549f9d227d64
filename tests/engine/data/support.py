"""Helpers shared by the camera/frame tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gemel_engine.data.frames import CameraSource, Frame

CLIP_FRAMES = 12
CLIP_FPS = 12.5
CLIP_SIZE = (64, 48)


class CountingSource(CameraSource):
    """Wraps a source and counts how often its frames are read."""

    def __init__(self, inner: CameraSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.fps = inner.fps
        self.resolution = inner.resolution
        self.reads = 0

    @property
    def frame_count(self) -> int | None:
        return self.inner.frame_count

    def identity(self) -> dict[str, Any] | None:
        return self.inner.identity()

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        self.reads += 1
        return self.inner.frames(max_frames)
