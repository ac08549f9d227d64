"""Turn a camera into training frames: sample, resize, split by time, and cache on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gemel_engine.data.frames import Box, CameraSource
from gemel_engine.errors import SourceError

__all__ = ["FrameCache", "FrameSet", "SamplingSpec", "resize_frame", "sample_frames", "split_by_time"]

CACHE_FORMAT = 1
_VOLATILE = ("size", "mtime_ns", "files")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class SamplingSpec:
    """Which frames to take from a source and at what size; checked on creation (SourceError if bad)."""

    # Keep every k-th frame (1 keeps all); cannot be combined with count.
    every: int | None = None
    # Keep this many frames spread evenly over the source (fewer if it is shorter); needs a known length.
    count: int | None = None
    # Resize kept frames to (width, height), scaling boxes with them; None keeps the source size.
    size: tuple[int, int] | None = None
    # Read at most this many frames from the source; bounds endless sources.
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.every is not None and self.count is not None:
            raise SourceError(
                f"sampling: give every or count, not both (every={self.every}, count={self.count})"
            )
        for name in ("every", "count", "max_frames"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise SourceError(f"sampling: {name} must be None or a positive integer, got {value!r}")
        if self.size is not None:
            if not isinstance(self.size, tuple | list) or len(self.size) != 2:
                raise SourceError(f"sampling: size must be (width, height), got {self.size!r}")
            if not all(_positive_int(v) and v <= 8192 for v in self.size):
                raise SourceError(f"sampling: size must be two integers in [1, 8192], got {self.size!r}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def to_json(self) -> dict[str, Any]:
        """Return the spec as a JSON-serialisable dict."""
        return {
            "every": self.every,
            "count": self.count,
            "size": list(self.size) if self.size else None,
            "max_frames": self.max_frames,
        }


@dataclass(frozen=True, eq=False)
class FrameSet:
    """Frames held in memory: images N x H x W x 3 uint8, timestamps (s), source indices, boxes per frame.

    ``boxes[i]`` is None where the source has no ground truth. Raises SourceError on creation when the
    arrays disagree in length or the images are not uint8 RGB.
    """

    images: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    boxes: tuple[tuple[Box, ...] | None, ...]

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise SourceError(
                f"frame set images must be N x H x W x 3 uint8, got {images.shape} {images.dtype}"
            )
        n = images.shape[0]
        object.__setattr__(self, "timestamps", np.asarray(self.timestamps, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "indices", np.asarray(self.indices, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "boxes", tuple(self.boxes))
        if not len(self.timestamps) == len(self.indices) == len(self.boxes) == n:
            raise SourceError(
                f"frame set has {n} images, {len(self.timestamps)} timestamps, {len(self.indices)} indices "
                f"and {len(self.boxes)} box lists"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        """Return (width, height) of the images."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    def select(self, positions: Sequence[int] | np.ndarray) -> FrameSet:
        """Return a new FrameSet holding the frames at ``positions`` (in that order)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        return FrameSet(
            images=self.images[pos],
            timestamps=self.timestamps[pos],
            indices=self.indices[pos],
            boxes=tuple(self.boxes[int(i)] for i in pos),
        )


def resize_frame(
    image: np.ndarray, boxes: tuple[Box, ...] | None, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[Box, ...] | None]:
    """Return ``image`` resized to ``size`` (width, height) and ``boxes`` scaled to match.

    Raises SourceError when the image is not HxWx3 uint8 or the size is not two positive integers.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SourceError(f"resize: image must be HxWx3 uint8, got {getattr(image, 'shape', None)}")
    if len(size) != 2 or not all(_positive_int(v) for v in size):
        raise SourceError(f"resize: size must be (width, height) positive integers, got {size!r}")
    height, width = image.shape[:2]
    new_w, new_h = int(size[0]), int(size[1])
    if (new_w, new_h) == (width, height):
        return image, boxes
    shrinking = new_w * new_h < width * height
    resized = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    if boxes is None:
        return resized, None
    sx, sy = new_w / width, new_h / height
    return resized, tuple(b.scaled(sx, sy) for b in boxes)


def sample_frames(source: CameraSource, spec: SamplingSpec | None = None) -> FrameSet:
    """Read ``source`` once and return the frames ``spec`` selects (all frames by default).

    Raises SourceError when the source fails, when ``count`` is asked of a source of unknown length
    without ``max_frames``, or when no frame is selected.
    """
    spec = spec or SamplingSpec()
    wanted: set[int] | None = None
    limit = spec.max_frames
    if spec.count is not None:
        total = source.frame_count
        if total is None and limit is None:
            raise SourceError(
                f"{source.name}: cannot spread {spec.count} frames over a source of unknown length; "
                "set max_frames"
            )
        total = limit if total is None else (total if limit is None else min(total, limit))
        wanted = set(
            np.unique(np.round(np.linspace(0, total - 1, num=min(spec.count, total)))).astype(int).tolist()
        )
        limit = max(wanted) + 1
    every = spec.every or 1
    images: list[np.ndarray] = []
    stamps: list[float] = []
    indices: list[int] = []
    boxes: list[tuple[Box, ...] | None] = []
    for position, frame in enumerate(source.frames(max_frames=limit)):
        keep = position in wanted if wanted is not None else position % every == 0
        if not keep:
            continue
        image, frame_boxes = frame.image, frame.boxes
        if spec.size is not None:
            image, frame_boxes = resize_frame(image, frame_boxes, spec.size)
        elif images and image.shape != images[0].shape:
            raise SourceError(
                f"{source.name}: frame {frame.index} is {image.shape[1]}x{image.shape[0]}, "
                f"earlier frames are {images[0].shape[1]}x{images[0].shape[0]}; set a size to resize them"
            )
        images.append(image)
        stamps.append(frame.timestamp)
        indices.append(frame.index)
        boxes.append(frame_boxes)
    if not images:
        raise SourceError(f"{source.name}: no frames were sampled")
    return FrameSet(np.stack(images), np.array(stamps), np.array(indices), tuple(boxes))


def split_by_time(
    frames: FrameSet, *, val_fraction: float = 0.2, test_fraction: float = 0.2, gap: float = 1.0
) -> tuple[FrameSet, FrameSet, FrameSet]:
    """Return (train, validation, test) split by time: test is the latest ``test_fraction`` of the frames,
    validation the ``val_fraction`` before it, train the rest.

    Frames less than ``gap`` seconds before the first frame of the next set are dropped, so every validation
    timestamp is at least ``gap`` after the last training one and every test timestamp at least ``gap`` after
    the last validation one: neighbouring frames (the same objects in view) never sit on both sides.

    Raises:
        SourceError: a fraction outside (0, 1), fractions summing to 1 or more, a negative gap, or a set that
            would be empty.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise SourceError(f"split: {name} must be in (0, 1), got {fraction!r}")
    if val_fraction + test_fraction >= 1:
        raise SourceError(
            f"split: val_fraction + test_fraction must leave frames to train on, got {val_fraction} + {test_fraction}"
        )
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not math.isfinite(gap) or gap < 0:
        raise SourceError(f"split: gap must be a number of seconds >= 0, got {gap!r}")
    n = len(frames)
    order = np.argsort(frames.timestamps, kind="stable")
    ts = frames.timestamps[order]
    n_test = max(1, math.ceil(test_fraction * n))
    n_val = max(1, math.ceil(val_fraction * n))
    if n_test + n_val >= n:
        raise SourceError(
            f"split: {n} frame(s) are too few to split with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    first_test = ts[n - n_test]
    test_mask = ts >= first_test
    first_val = ts[n - n_test - n_val]
    val_mask = (ts >= first_val) & (ts <= first_test - gap) & ~test_mask
    train_mask = (ts <= first_val - gap) & (ts < first_val)
    for name, mask in (("training", train_mask), ("validation", val_mask)):
        if not mask.any():
            raise SourceError(
                f"split: no {name} frame is {gap:g}s before the next set's frames "
                f"(span {ts[0]:g}..{ts[-1]:g}s); use a smaller gap or more frames"
            )
    return frames.select(order[train_mask]), frames.select(order[val_mask]), frames.select(order[test_mask])


class FrameCache:
    """Sampled frames on disk under ``root``: ``<key>.npz`` (uint8 images), ``<key>.json`` (boxes, metadata).

    The key hashes the source identity (path, size and mtime for files; the config for synthetic
    cameras) and the sampling spec, so a changed file or spec is sampled again. Files are written to a
    temporary name and renamed, the JSON last, so a failed write never damages what is cached. Sources
    without an identity (live streams) are sampled every time. Raises SourceError when ``root`` cannot
    be created.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"cannot create frame cache folder {self.root}: {exc.strerror}") from exc
        self.hits = 0
        self.misses = 0

    def key(self, source: CameraSource, spec: SamplingSpec | None = None) -> str | None:
        """Return the cache key for ``source`` sampled with ``spec``, or None if it cannot be cached."""
        identity = source.identity()
        if identity is None:
            return None
        return _digest(
            {"format": CACHE_FORMAT, "source": identity, "spec": (spec or SamplingSpec()).to_json()}
        )

    def get(self, source: CameraSource, spec: SamplingSpec | None = None) -> FrameSet:
        """Return the frames of ``source`` under ``spec``: from disk if cached, else sampled and stored.

        Raises SourceError when sampling fails or the cache cannot be written.
        """
        spec = spec or SamplingSpec()
        key = self.key(source, spec)
        if key is not None:
            cached = self.load(key)
            if cached is not None:
                self.hits += 1
                return cached
        self.misses += 1
        frames = sample_frames(source, spec)
        if key is not None and self.key(source, spec) == key:
            self._store(key, source.identity() or {}, spec, frames)
        return frames

    def load(self, key: str) -> FrameSet | None:
        """Return the frames stored under ``key``, or None when absent, incomplete or corrupt."""
        meta_path, data_path = self.root / f"{key}.json", self.root / f"{key}.npz"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                return None
            if data_path.stat().st_size != meta["npz_bytes"]:
                return None
            with np.load(data_path, allow_pickle=False) as data:
                images, stamps, indices = data["images"], data["timestamps"], data["indices"]
            boxes = tuple(
                None if entry is None else tuple(Box.from_json(b) for b in entry) for entry in meta["boxes"]
            )
            return FrameSet(images, stamps, indices, boxes)
        except (OSError, ValueError, KeyError, TypeError, SourceError, json.JSONDecodeError):
            return None

    def clear(self) -> int:
        """Delete every cache entry and return how many entries were deleted."""
        count = 0
        for meta in self.root.glob("*.json"):
            for path in (meta, meta.with_suffix(".npz")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            count += 1
        return count

    def _store(self, key: str, identity: dict[str, Any], spec: SamplingSpec, frames: FrameSet) -> None:
        slot = _digest(
            {"source": {k: v for k, v in identity.items() if k not in _VOLATILE}, "spec": spec.to_json()}
        )
        data_path = self.root / f"{key}.npz"
        try:
            _atomic_write(
                data_path,
                lambda fh: np.savez(
                    fh, images=frames.images, timestamps=frames.timestamps, indices=frames.indices
                ),
            )
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "slot": slot,
                "source": identity,
                "spec": spec.to_json(),
                "count": len(frames),
                "npz_bytes": data_path.stat().st_size,
                "boxes": [None if b is None else [box.to_json() for box in b] for b in frames.boxes],
            }
            payload = json.dumps(meta, sort_keys=True).encode("utf-8")
            _atomic_write(self.root / f"{key}.json", lambda fh: fh.write(payload))
        except OSError as exc:
            raise SourceError(
                f"cannot write frame cache entry in {self.root}: {exc.strerror or exc}"
            ) from exc
        self._drop_stale(slot, keep=key)

    def _drop_stale(self, slot: str, *, keep: str) -> None:
        for meta_path in self.root.glob("*.json"):
            if meta_path.stem == keep:
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and meta.get("slot") == slot:
                for path in (meta_path, meta_path.with_suffix(".npz")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
