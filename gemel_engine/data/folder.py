"""A folder of still images (jpg/png) played back as a camera at a given frame rate."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gemel_engine.data.frames import (
    CameraSource,
    Frame,
    check_fps,
    check_frame_size,
    check_max_frames,
    check_start_frame,
)
from gemel_engine.errors import SourceError

__all__ = ["IMAGE_SUFFIXES", "ImageFolderSource"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class ImageFolderSource(CameraSource):
    """The jpg/png files directly inside a folder, in natural name order (frame2 before frame10).

    Frame i is stamped i / fps seconds. Every image must have the size of the first one. Raises
    SourceError when the folder is missing or holds no images, or fps is not a positive number.
    """

    def __init__(self, path: str | os.PathLike[str], *, fps: float) -> None:
        self.path = Path(path)
        self.name = self.path.name or str(self.path)
        if not self.path.is_dir():
            raise SourceError(f"image folder not found: {self.path}")
        self.fps = check_fps(fps, str(self.path))
        try:
            entries = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError as exc:
            raise SourceError(f"cannot list image folder {self.path}: {exc.strerror}") from exc
        if not entries:
            raise SourceError(f"no .jpg or .png images in {self.path}")
        self.files: tuple[Path, ...] = tuple(sorted(entries, key=lambda p: _natural_key(p.name)))
        self.resolution = self._load(self.files[0]).shape[1::-1]

    @property
    def frame_count(self) -> int:
        """Return the number of images in the folder."""
        return len(self.files)

    def identity(self) -> dict[str, Any]:
        """Return the folder, fps and a digest of every image's name, size and modification time.

        Raises SourceError when an image can no longer be read.
        """
        digest = hashlib.sha256()
        for file in self.files:
            try:
                st = file.stat()
            except OSError as exc:
                raise SourceError(f"image not readable: {file} ({exc.strerror})") from exc
            digest.update(f"{file.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {
            "kind": "folder",
            "path": str(self.path.resolve()),
            "fps": self.fps,
            "files": digest.hexdigest(),
        }

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield the images in order as frames (at most ``max_frames``).

        Raises SourceError when an image is unreadable or differs in size from the first.
        """
        check_max_frames(max_frames)
        files = self.files if max_frames is None else self.files[:max_frames]
        return (
            Frame(index=i, timestamp=i / self.fps, image=self._load(file, expect=self.resolution))
            for i, file in enumerate(files)
        )

    def frames_from(self, start: int) -> Iterator[Frame]:
        """Yield the images from index ``start`` on, reading none before it.

        Raises:
            SourceError: ``start`` is not an integer >= 0, or an image is unreadable.
        """
        check_start_frame(start)
        return (
            Frame(index=i, timestamp=i / self.fps, image=self._load(self.files[i], expect=self.resolution))
            for i in range(start, len(self.files))
        )

    def _load(self, file: Path, expect: tuple[int, int] | None = None) -> np.ndarray:
        try:
            with Image.open(file) as img:
                check_frame_size(*img.size, str(file))  # from the header, before decoding
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise SourceError(f"cannot read image {file}: {exc}") from exc
        if expect is not None and rgb.shape[1::-1] != expect:
            w, h = expect
            raise SourceError(
                f"image {file} is {rgb.shape[1]}x{rgb.shape[0]}, the folder's first image is {w}x{h}"
            )
        return rgb
