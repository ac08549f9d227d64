"""Camera sources checked before anything opens them, and the first frame that proves they decode.

A source is never handed to a shell; the checks below still refuse whitespace, control characters and
shell metacharacters outright, keep file paths inside the allowed roots (symlinks resolved), and bound
every network probe by a timeout.
"""

from __future__ import annotations

import io
import logging
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError

from gemel_engine.data.frames import FrameSizeError
from gemel_engine.data.sources import SHELL_METACHARACTERS, open_source, resolve_media_path, synthetic_config
from gemel_engine.data.stream import STREAM_SCHEMES, Backoff, StreamSource, redact_url
from gemel_engine.errors import GemelError

logger = logging.getLogger(__name__)

# A URL's query string legitimately carries these; everywhere else they are refused.
_URL_SAFE = frozenset("&?")
# Default seconds a stream gets to answer with its first frame (settings.CAMERA_PROBE_TIMEOUT_S overrides).
DEFAULT_PROBE_TIMEOUT_S = 5.0
# What a stream that gives no frame is told, whatever happened (the reason goes to the server log only).
STREAM_PROBE_FAILED = ("could not decode a frame from the camera: the stream gave no video frame within {timeout:g}s "
                       "(the server log has the reason)")
# Longest side of a stored thumbnail, in pixels.
THUMBNAIL_SIDE = 192


def probe_timeout() -> float:
    """Return the seconds a network camera gets to connect and deliver its first frame."""
    return float(getattr(settings, "CAMERA_PROBE_TIMEOUT_S", DEFAULT_PROBE_TIMEOUT_S))


def allowed_roots() -> list[Path]:
    """Return the folders file sources may point into: MEDIA_ROOT and settings.CAMERA_FILE_ROOTS."""
    return [Path(settings.MEDIA_ROOT), *(Path(root) for root in settings.CAMERA_FILE_ROOTS)]


def _scheme(source: str) -> str:
    head, sep, _ = source.partition("://")
    return head.lower() if sep else ""


def _check_characters(source: str, *, url: bool) -> None:
    for ch in source:
        if ch.isspace() or unicodedata.category(ch).startswith("C"):
            raise ValidationError(f"camera source must not contain whitespace or control characters ({ch!r})")
    refused = SHELL_METACHARACTERS - _URL_SAFE if url else SHELL_METACHARACTERS
    bad = sorted({ch for ch in source if ch in refused})
    if bad:
        raise ValidationError(f"camera source contains shell metacharacters: {' '.join(bad)}")


def _resolve_path(path: str) -> Path:
    """Return the existing file or folder ``path`` names inside an allowed root (relative paths are tried under each).

    A path outside every root is refused as such, whether or not anything is there (its existence is never
    looked up); one inside a root but absent is "no such file": the two need different fixes.
    """
    inside = False
    for root in allowed_roots():
        try:
            full = resolve_media_path(path, media_root=root)
        except GemelError:
            continue
        inside = True
        if full.exists():
            return full
    if not inside:
        raise ValidationError(
            f"{path!r} is outside the allowed folders: file sources must be inside the media folder or a folder "
            "in GEMEL_CAMERA_FILE_ROOTS"
        )
    raise ValidationError(f"no such file: {path!r} is inside the allowed folders, but nothing is there")


def source_normalize(source: str) -> str:
    """Return ``source`` in the form stored: URLs unchanged, file URLs and paths as an absolute path.

    Raises:
        ValidationError: empty, whitespace/control characters/shell metacharacters, an unknown scheme,
            a malformed synthetic URI, or a path outside the allowed roots (symlinks resolved).
    """
    source = source or ""
    if not source:
        raise ValidationError("camera source is required")
    scheme = _scheme(source)
    _check_characters(source, url=scheme in ("synthetic", *STREAM_SCHEMES))
    if scheme == "synthetic":
        try:
            synthetic_config(source)
        except GemelError as exc:
            raise ValidationError(str(exc)) from None
        return source
    if scheme in STREAM_SCHEMES:
        if not urlsplit(source).hostname:
            raise ValidationError(f"stream URL has no host: {redact_url(source)}")
        return source
    if scheme == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValidationError("file URLs must name a local path without host, query or fragment")
        return str(_resolve_path(unquote(parts.path)))
    if scheme:
        known = ", ".join(f"{s}://" for s in ("synthetic", *STREAM_SCHEMES, "file"))
        raise ValidationError(f"unknown camera source scheme {scheme!r}; use {known} or a path")
    return str(_resolve_path(source))


def first_frame(source: str, *, fps: float) -> np.ndarray:
    """Return the first decoded frame (H×W×3 uint8) of a normalised ``source``.

    Streams get ``probe_timeout()`` seconds to connect and deliver it, without reconnect attempts.

    Raises:
        ValidationError: the source cannot be opened, does not answer in time, yields no frame, or its
            frames have more than MAX_FRAME_PIXELS pixels (said plainly, streams included: such a source
            did decode as video).
    """
    timeout = probe_timeout()
    is_stream = _scheme(source) in STREAM_SCHEMES
    try:
        if is_stream:
            camera = StreamSource(
                source, connect_timeout=timeout, read_timeout=timeout, backoff=Backoff(attempts=0), live=False,
                fps=fps,
            )
        else:
            camera = open_source(source, fps=fps)
        with camera:
            frame = next(iter(camera.frames(max_frames=1)), None)
    except FrameSizeError as exc:
        raise ValidationError(f"camera refused: {exc}") from None
    except GemelError as exc:
        if is_stream:
            # One answer whatever the address did (refused, silent, spoke another protocol, answered 403):
            # otherwise registering cameras would map the services the server can reach.
            logger.info("camera probe of %s failed: %s", redact_url(source), exc)
            raise ValidationError(STREAM_PROBE_FAILED.format(timeout=timeout)) from None
        raise ValidationError(f"could not decode a frame from the camera: {exc}") from None
    if frame is None:
        raise ValidationError("could not decode a frame from the camera: it yielded none")
    return frame.image


def thumbnail_png(image: np.ndarray) -> bytes:
    """Return ``image`` scaled down to at most THUMBNAIL_SIDE pixels a side, as PNG bytes."""
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
