"""Frames, ground-truth boxes and the camera-source interface every source implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from gemel_engine.errors import GemelError, SourceError

# Bounds of a class vocabulary: how many names, and how long each may be.
MAX_VOCABULARY = 1000
MAX_CLASS_NAME = 64

__all__ = ["Box", "CameraSource", "Frame", "FrameSizeError"]

# The frame rates a camera may have: a frame every 100 s at least, 1000 a second at most. Outside them
# frame times overflow or a camera would flood the reader.
MIN_FPS = 0.01
MAX_FPS = 1000.0
# The most pixels a source's frames may have (4K UHD, 3840x2160): frames are decoded whole before they are
# resized, so a larger camera would hold hundreds of MiB per frame in whatever reads it.
MAX_FRAME_PIXELS = 3840 * 2160


class FrameSizeError(SourceError):
    """A source whose frames have more than MAX_FRAME_PIXELS pixels."""


def check_frame_size(width: int, height: int, what: str) -> None:
    """Raise FrameSizeError when frames of ``width`` x ``height`` have more than MAX_FRAME_PIXELS pixels.

    Returns None.
    """
    if width * height > MAX_FRAME_PIXELS:
        raise FrameSizeError(
            f"{what}: frames of {width}x{height} are over the limit of {MAX_FRAME_PIXELS:,} pixels (4K UHD)"
        )


@dataclass(frozen=True)
class Box:
    """An axis-aligned ground-truth box in pixel coordinates (x2 > x1, y2 > y1, right/bottom exclusive)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        coords = (self.x1, self.y1, self.x2, self.y2)
        if not all(math.isfinite(c) for c in coords):
            raise SourceError(f"box {self.label!r} has a non-finite coordinate: {coords}")
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise SourceError(f"box {self.label!r} has x2 < x1 or y2 < y1: {coords}")

    @property
    def width(self) -> float:
        """Return the box width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """Return the box height in pixels."""
        return self.y2 - self.y1

    def scaled(self, sx: float, sy: float) -> Box:
        """Return this box with x multiplied by ``sx`` and y by ``sy`` (for resized frames)."""
        return Box(self.label, self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this box."""
        return {"label": self.label, "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Box:
        """Return the box stored by :meth:`to_json`; raises SourceError if a field is missing or wrong."""
        try:
            return cls(
                str(data["label"]), float(data["x1"]), float(data["y1"]), float(data["x2"]), float(data["y2"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"malformed box record {data!r}: {exc}") from exc


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame: position in its source, time in seconds, HxWx3 uint8 RGB pixels, boxes.

    ``boxes`` is None when the source has no ground truth, and an empty tuple when it has ground truth
    and nothing is visible.
    """

    index: int
    timestamp: float
    image: np.ndarray
    boxes: tuple[Box, ...] | None = None

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            dtype = getattr(img, "dtype", type(img).__name__)
            raise SourceError(f"frame {self.index}: image must be an HxWx3 uint8 array, got {shape} {dtype}")
        check_frame_size(img.shape[1], img.shape[0], f"frame {self.index}")

    @property
    def width(self) -> int:
        """Return the image width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Return the image height in pixels."""
        return int(self.image.shape[0])


def check_start_frame(start: object) -> int:
    """Return ``start`` when it is a frame index (an integer >= 0).

    Raises:
        SourceError: anything else.
    """
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise SourceError(f"start frame must be an integer >= 0, got {start!r}")
    return start


class CameraSource(ABC):
    """A camera: something that yields RGB frames at a frame rate. Use it as a context manager.

    Subclasses set ``name``, ``fps`` and ``resolution`` (width, height) when opened, and raise
    SourceError from their constructor when the source cannot be opened.
    """

    name: str
    fps: float
    resolution: tuple[int, int]

    @property
    def frame_count(self) -> int | None:
        """Return how many frames :meth:`frames` yields from the start, or None when unknown or endless."""
        return None

    @abstractmethod
    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield frames in order (at most ``max_frames``); raises SourceError when reading fails.

        File-like sources start again from the first frame on every call; live streams go on from now.
        """

    def frames_from(self, start: int) -> Iterator[Frame]:
        """Yield frames in order from frame index ``start`` on (frames before it are read and skipped; sources
        that can seek override this). Live streams ignore ``start``: every frame they deliver is new.

        Raises:
            SourceError: ``start`` is not an integer >= 0, or reading fails.
        """
        check_start_frame(start)
        return (frame for frame in self.frames() if frame.index >= start)

    def identity(self) -> dict[str, Any] | None:
        """Return a JSON-serialisable description that changes whenever the frames would, or None.

        None means the frames cannot be reproduced (a live stream) and must not be cached.
        """
        return None

    def close(self) -> None:  # noqa: B027 - sources without resources need no close
        """Release any resources the source holds; closing twice is harmless. Returns None."""

    def __enter__(self) -> CameraSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.resolution
        return f"{type(self).__name__}(name={self.name!r}, fps={self.fps:g}, resolution={w}x{h})"


def check_max_frames(max_frames: int | None) -> None:
    """Raise SourceError unless ``max_frames`` is None or a non-negative int. Returns None."""
    if max_frames is None:
        return
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 0:
        raise SourceError(f"max_frames must be None or a non-negative integer, got {max_frames!r}")


def check_fps(fps: object, what: str) -> float:
    """Return ``fps`` as a float; raises SourceError unless it is a finite number in [MIN_FPS, MAX_FPS]."""
    if (
        isinstance(fps, bool)
        or not isinstance(fps, int | float)
        or not math.isfinite(fps)
        or not MIN_FPS <= fps <= MAX_FPS
    ):
        raise SourceError(f"{what}: fps must be a number in [{MIN_FPS:g}, {MAX_FPS:g}], got {fps!r}")
    return float(fps)


def check_vocabulary(names: object, where: str, *, error: type[GemelError]) -> tuple[str, ...]:
    """Return ``names`` as a class vocabulary: 1 to ``MAX_VOCABULARY`` distinct, non-empty names of at most
    ``MAX_CLASS_NAME`` characters without surrounding spaces.

    Raises:
        error: ``names`` is not such a sequence (``where`` names it in the message).
    """
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise error(f"{where} must be a list of class names, got {type(names).__name__}")
    if not 1 <= len(names) <= MAX_VOCABULARY:
        raise error(f"{where} must name 1 to {MAX_VOCABULARY} classes, got {len(names)}")
    for position, name in enumerate(names):
        if not isinstance(name, str) or not name or name != name.strip() or len(name) > MAX_CLASS_NAME:
            raise error(
                f"{where}: class {position} must be a name of 1 to {MAX_CLASS_NAME} characters without surrounding "
                f"spaces, got {name!r}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise error(f"{where} names a class more than once: {', '.join(repeated)}")
    return tuple(names)
