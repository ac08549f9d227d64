"""Network cameras (RTSP and HTTP/HTTPS streams) with timeouts and bounded reconnects."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av

from gemel_engine.data.frames import (
    CameraSource,
    Frame,
    check_fps,
    check_frame_size,
    check_max_frames,
    check_start_frame,
)
from gemel_engine.errors import SourceError

__all__ = ["STREAM_SCHEMES", "Backoff", "StreamSource", "redact_url"]

STREAM_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
_DEFAULT_FPS = 25.0
_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, ValueError, IndexError)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off between reconnect attempts; checked on creation (SourceError if bad)."""

    # Seconds to wait before the first reconnect attempt.
    initial: float = 0.5
    # Each further wait is the previous one times this factor (>= 1).
    factor: float = 2.0
    # No wait is longer than this many seconds.
    max_delay: float = 8.0
    # Reconnect attempts in a row before the stream is given up (0 disables reconnecting).
    attempts: int = 5

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max_delay"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise SourceError(f"back-off {name} must be a finite number >= 0, got {value!r}")
        if self.factor < 1:
            raise SourceError(f"back-off factor must be >= 1, got {self.factor!r}")
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or not 0 <= self.attempts <= 1000
        ):
            raise SourceError(f"back-off attempts must be an integer in [0, 1000], got {self.attempts!r}")

    def delays(self) -> list[float]:
        """Return the wait in seconds before each attempt, in order (``attempts`` values)."""
        return [min(self.initial * self.factor**i, self.max_delay) for i in range(self.attempts)]


def redact_url(url: str) -> str:
    """Return ``url`` with any user name and password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class _Connection:
    container: Any
    decoder: Iterator[Any]
    time_base: Any
    first_pts: int | None = None
    pending: list[Any] = field(default_factory=list)


class StreamSource(CameraSource):
    """A live RTSP or HTTP(S) camera read through FFmpeg (PyAV).

    Connecting (including the first frame) must finish within ``connect_timeout`` seconds and every
    later read within ``read_timeout``. When reading fails, or the stream ends while ``live`` is true,
    the source reconnects after each of ``backoff.delays()``; frame indices and timestamps carry on.
    ``fps`` is used when the stream states no frame rate (else 25). Raises SourceError from the
    constructor for a bad URL or parameter, an unreachable host, or a stream without video.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 5.0,
        backoff: Backoff | None = None,
        live: bool = True,
        fps: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.name = redact_url(url)
        parts = _split(url)
        if parts.scheme not in STREAM_SCHEMES:
            raise SourceError(
                f"stream URL must start with {', '.join(s + '://' for s in STREAM_SCHEMES)}: {self.name}"
            )
        if not parts.hostname:
            raise SourceError(f"stream URL has no host: {self.name}")
        self.connect_timeout = _timeout(connect_timeout, "connect_timeout")
        self.read_timeout = _timeout(read_timeout, "read_timeout")
        self.backoff = backoff if backoff is not None else Backoff()
        if not isinstance(self.backoff, Backoff):
            raise SourceError(f"backoff must be a Backoff, got {type(backoff).__name__}")
        self.live = bool(live)
        self._fps_fallback = check_fps(fps, self.name) if fps is not None else None
        self._sleep = sleep
        self._index = 0
        self._last_ts = -math.inf
        self._ts_offset = 0.0
        self.reconnects = 0
        self._conn: _Connection | None = None
        self._conn = self._connect()

    def identity(self) -> None:
        """Return None: a live stream cannot be reproduced, so its frames are never cached."""
        return None

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield frames from now on (at most ``max_frames``), reconnecting with back-off when needed.

        Raises SourceError when the source was closed or every reconnect attempt failed.
        """
        check_max_frames(max_frames)
        if self._conn is None:
            raise SourceError(f"stream was closed: {self.name}")
        return self._frames(max_frames)

    def frames_from(self, start: int) -> Iterator[Frame]:
        """Yield frames from now on: a live stream's frames are all new, so ``start`` is checked and ignored.

        Raises:
            SourceError: ``start`` is not an integer >= 0, the source was closed, or reconnecting failed.
        """
        check_start_frame(start)
        return self.frames()

    def close(self) -> None:
        """Close the network connection; frames() then raises SourceError. Returns None."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _close(conn.container)

    def _frames(self, max_frames: int | None) -> Iterator[Frame]:
        produced = 0
        while max_frames is None or produced < max_frames:
            conn = self._conn
            if conn is None:
                raise SourceError(f"stream was closed: {self.name}")
            try:
                vf = conn.pending.pop(0) if conn.pending else next(conn.decoder)
            except StopIteration:
                if not self.live:
                    return
                self._reconnect("the stream ended")
                continue
            except _AV_ERRORS as exc:
                self._reconnect(_reason(exc))
                continue
            yield self._to_frame(conn, vf)
            produced += 1

    def _to_frame(self, conn: _Connection, vf: Any) -> Frame:
        if vf.pts is not None and conn.time_base is not None:
            if conn.first_pts is None:
                conn.first_pts = vf.pts
            ts = self._ts_offset + float((vf.pts - conn.first_pts) * conn.time_base)
        else:
            ts = self._last_ts + 1.0 / self.fps if math.isfinite(self._last_ts) else 0.0
        ts = max(ts, self._last_ts + 1e-6) if math.isfinite(self._last_ts) else ts
        self._last_ts = ts
        frame = Frame(index=self._index, timestamp=ts, image=vf.to_ndarray(format="rgb24"))
        self._index += 1
        return frame

    def _connect(self) -> _Connection:
        options = {"rtsp_transport": "tcp"} if self.url.startswith(("rtsp://", "rtsps://")) else {}
        started = time.monotonic()
        try:
            container = av.open(
                self.url,
                options=options,
                timeout=(self.connect_timeout, self.read_timeout),
                metadata_errors="replace",
            )
        except _AV_ERRORS as exc:
            waited = time.monotonic() - started
            if isinstance(exc, av.error.ExitError) or waited >= 0.9 * self.connect_timeout:
                raise SourceError(f"no answer from {self.name} within {self.connect_timeout:g}s") from exc
            raise SourceError(f"cannot connect to {self.name}: {_reason(exc)}") from exc
        try:
            if not container.streams.video:
                raise SourceError(f"no video stream at {self.name}")
            stream = container.streams.video[0]
            check_frame_size(stream.codec_context.width, stream.codec_context.height, self.name)
            decoder = container.decode(stream)
            first = next(decoder, None)
            if first is None:
                raise SourceError(f"stream sent no frames: {self.name}")
        except SourceError:
            _close(container)
            raise
        except _AV_ERRORS as exc:
            _close(container)
            raise SourceError(f"cannot read from {self.name}: {_reason(exc)}") from exc
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else (self._fps_fallback or _DEFAULT_FPS)
        self.resolution = (int(first.width), int(first.height))
        return _Connection(container=container, decoder=decoder, time_base=stream.time_base, pending=[first])

    def _reconnect(self, reason: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close(conn.container)
        last = reason
        for delay in self.backoff.delays():
            self._sleep(delay)
            try:
                conn = self._connect()
            except SourceError as exc:
                last = str(exc)
                continue
            self.reconnects += 1
            if math.isfinite(self._last_ts):
                self._ts_offset = self._last_ts + 1.0 / self.fps
            self._conn = conn
            return
        raise SourceError(f"lost stream {self.name} after {self.backoff.attempts} reconnect attempts: {last}")


def _split(url: str) -> Any:
    if not isinstance(url, str) or any(ch in url for ch in "\0\r\n"):
        raise SourceError(f"stream URL must be a one-line string, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise SourceError(f"malformed stream URL {redact_url(url)}: {exc}") from exc
    return parts


def _timeout(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SourceError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    if not 0 < value <= 3600:
        raise SourceError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    return float(value)


def _close(container: Any) -> None:
    with contextlib.suppress(*_AV_ERRORS):
        container.close()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0]
