"""Video files as camera sources (PyAV first, OpenCV as the fallback) and a small video writer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from gemel_engine.data.frames import (
    CameraSource,
    Frame,
    FrameSizeError,
    check_fps,
    check_frame_size,
    check_max_frames,
)
from gemel_engine.errors import SourceError

__all__ = ["VIDEO_CODECS", "VIDEO_SUFFIXES", "VideoFileSource", "write_video"]

VIDEO_SUFFIXES: dict[str, str] = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".avi": "avi",
    ".mkv": "matroska",
}
VIDEO_CODECS: tuple[str, ...] = ("h264", "mpeg4", "mjpeg")

_BACKENDS = ("auto", "pyav", "opencv")
_PYAV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, ValueError, IndexError)


class VideoFileSource(CameraSource):
    """Frames of a video file (mp4/avi/mkv/mov with h264, mpeg4, mjpeg or anything FFmpeg reads).

    PyAV decodes when it can; when it cannot open or decode the file, OpenCV is tried. ``fps`` is used
    only when the file states no frame rate. Raises SourceError when the file is missing, not a video,
    has no frames, or neither backend decodes it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fps: float | None = None, backend: str = "auto"
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        if backend not in _BACKENDS:
            raise SourceError(f"video backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        if fps is not None:
            fps = check_fps(fps, str(self.path))
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"not a regular file: {self.path}")
        if self.path.stat().st_size == 0:
            raise SourceError(f"video file is empty: {self.path}")
        self._count: int | None = None
        self._closed = False
        reason = ""
        if backend in ("auto", "pyav"):
            try:
                self._probe_pyav(fps)
                self.backend = "pyav"
                return
            except FrameSizeError:
                raise  # OpenCV would decode the same frames
            except SourceError as exc:
                if backend == "pyav":
                    raise
                reason = str(exc)
        try:
            self._probe_opencv(fps)
            self.backend = "opencv"
        except FrameSizeError:
            raise
        except SourceError as exc:
            raise SourceError(reason or str(exc)) from None

    @property
    def frame_count(self) -> int | None:
        """Return the number of frames the file holds (counted from packets when the header omits it)."""
        if self._count is None and self.backend == "pyav":
            self._count = self._count_packets()
        return self._count

    def identity(self) -> dict[str, Any]:
        """Return path, size and modification time: any change to the file changes the identity.

        Raises SourceError when the file can no longer be read.
        """
        try:
            st = self.path.stat()
        except OSError as exc:
            raise SourceError(f"video file not readable: {self.path} ({exc.strerror})") from exc
        return {
            "kind": "video",
            "path": str(self.path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield the file's frames from the start, timestamps from the stream (seconds from its start).

        Raises SourceError when decoding fails part-way or the source was closed.
        """
        check_max_frames(max_frames)
        if self._closed:
            raise SourceError(f"video source was closed: {self.path}")
        if max_frames == 0:
            return iter(())
        if self.backend == "pyav":
            return self._frames_pyav(max_frames)
        return self._frames_opencv(max_frames)

    def close(self) -> None:
        """Mark the source closed; frames() then raises SourceError. Returns None."""
        self._closed = True

    def _probe_pyav(self, fps: float | None) -> None:
        try:
            with av.open(str(self.path), metadata_errors="replace") as container:
                if not container.streams.video:
                    raise SourceError(f"no video stream in {self.path}")
                stream = container.streams.video[0]
                check_frame_size(stream.codec_context.width, stream.codec_context.height, str(self.path))
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                first = next(iter(container.decode(stream)), None)
                if first is None:
                    raise SourceError(f"video has no frames: {self.path}")
                self.resolution = (int(first.width), int(first.height))
                self.fps = _rate(rate, fps, self.path)
                if stream.frames > 0:
                    self._count = int(stream.frames)
        except SourceError:
            raise
        except _PYAV_ERRORS as exc:
            raise SourceError(f"cannot decode video {self.path}: {_reason(exc)}") from exc

    def _probe_opencv(self, fps: float | None) -> None:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise SourceError(f"cannot decode video {self.path}: OpenCV cannot open it")
            width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            check_frame_size(width, height, str(self.path))
            ok, image = cap.read()
            if not ok or image is None:
                raise SourceError(f"video has no frames: {self.path}")
            self.resolution = (int(image.shape[1]), int(image.shape[0]))
            stated = cap.get(cv2.CAP_PROP_FPS)
            self.fps = _rate(Fraction(stated).limit_denominator(1001) if stated > 0 else None, fps, self.path)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self._count = count if count > 0 else None
        finally:
            cap.release()

    def _count_packets(self) -> int | None:
        try:
            with av.open(str(self.path), metadata_errors="replace") as container:
                stream = container.streams.video[0]
                return sum(1 for packet in container.demux(stream) if packet.size > 0)
        except _PYAV_ERRORS:
            return None

    def _frames_pyav(self, max_frames: int | None) -> Iterator[Frame]:
        index = 0
        try:
            with av.open(str(self.path), metadata_errors="replace") as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                base = stream.time_base
                start = stream.start_time
                for vf in container.decode(stream):
                    if vf.pts is not None and base is not None:
                        ts = float((vf.pts - (start or 0)) * base)
                    else:
                        ts = index / self.fps
                    yield Frame(index=index, timestamp=ts, image=vf.to_ndarray(format="rgb24"))
                    index += 1
                    if max_frames is not None and index >= max_frames:
                        return
        except _PYAV_ERRORS as exc:
            raise SourceError(f"decoding {self.path} failed at frame {index}: {_reason(exc)}") from exc

    def _frames_opencv(self, max_frames: int | None) -> Iterator[Frame]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise SourceError(f"cannot decode video {self.path}: OpenCV cannot open it")
            index = 0
            while max_frames is None or index < max_frames:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    return
                msec = cap.get(cv2.CAP_PROP_POS_MSEC)
                ts = msec / 1000.0 if msec >= 0 else index / self.fps
                rgb = np.ascontiguousarray(bgr[..., ::-1])
                yield Frame(index=index, timestamp=ts, image=rgb)
                index += 1
        finally:
            cap.release()


def write_video(
    frames: Iterable[np.ndarray], path: str | os.PathLike[str], *, fps: float, codec: str = "h264"
) -> int:
    """Encode HxWx3 uint8 RGB frames to ``path`` (.mp4, .avi, .mkv, .mov) with PyAV; return the frame count.

    ``codec`` is one of VIDEO_CODECS. The file appears only once it is complete. Raises SourceError for
    an unknown suffix or codec, a bad fps, no frames, frames of odd or differing size or of the wrong
    type, or an encoder failure.
    """
    path = Path(path)
    fmt = VIDEO_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(f"cannot tell the container from {path}: use one of {', '.join(VIDEO_SUFFIXES)}")
    if codec not in VIDEO_CODECS:
        raise SourceError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
    rate = Fraction(check_fps(fps, str(path))).limit_denominator(1001)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    count = 0
    try:
        with av.open(str(tmp), "w", format=fmt) as container:
            stream = None
            for image in frames:
                _check_image(image, count, path)
                height, width = image.shape[:2]
                if stream is None:
                    if width % 2 or height % 2:
                        raise SourceError(f"{path}: frame size {width}x{height} must be even in both sides")
                    stream = _add_stream(container, codec, rate, width, height)
                elif (width, height) != (stream.width, stream.height):
                    raise SourceError(
                        f"{path}: frame {count} is {width}x{height}, "
                        f"earlier frames are {stream.width}x{stream.height}"
                    )
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                vf.pts = count
                container.mux(stream.encode(vf))
                count += 1
            if stream is None:
                raise SourceError(f"{path}: no frames to write")
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except _PYAV_ERRORS as exc:
        raise SourceError(f"writing {path} failed: {_reason(exc)}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return count


def _add_stream(container: Any, codec: str, rate: Fraction, width: int, height: int) -> Any:
    if codec == "h264":
        stream = container.add_stream("libx264", rate=rate)
        stream.options = {"preset": "veryfast", "crf": "16"}
        stream.pix_fmt = "yuv420p"
    elif codec == "mpeg4":
        stream = container.add_stream("mpeg4", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = max(1_000_000, int(width * height * float(rate) * 2))
    else:
        stream = container.add_stream("mjpeg", rate=rate)
        stream.pix_fmt = "yuvj420p"
        stream.bit_rate = max(1_000_000, int(width * height * float(rate) * 4))
    stream.width = width
    stream.height = height
    stream.time_base = Fraction(1) / rate
    return stream


def _check_image(image: object, index: int, path: Path) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise SourceError(f"{path}: frame {index} must be an HxWx3 uint8 array, got {shape}")


def _rate(stated: Fraction | None, fallback: float | None, path: Path) -> float:
    if stated is not None and stated > 0:
        return float(stated)
    if fallback is not None:
        return fallback
    raise SourceError(f"{path} states no frame rate: pass fps")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
