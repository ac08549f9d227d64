"""Open any camera from one URI: synthetic scenes, video files, image folders and network streams."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.frames import CameraSource
from gemel_engine.data.stream import STREAM_SCHEMES, StreamSource, redact_url
from gemel_engine.data.synthetic import CLASSES, SceneConfig, SyntheticCamera, seed_from_name
from gemel_engine.data.video import VideoFileSource
from gemel_engine.errors import SourceError

__all__ = ["SHELL_METACHARACTERS", "open_source", "resolve_media_path", "synthetic_config"]

SHELL_METACHARACTERS: frozenset[str] = frozenset(";&|$`<>\\\"'*?!\n\r\t\0")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SYNTHETIC_KEYS = {
    "seed": int,
    "width": int,
    "height": int,
    "fps": float,
    "frames": int,
    "density": float,
    "noise": float,
    "time_scale": float,
    "start_hour": float,
    "classes": str,
}


def open_source(
    uri: str,
    *,
    media_root: Path | None = None,
    fps: float | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 5.0,
) -> CameraSource:
    """Open the camera that ``uri`` names and return it (use it as a context manager).

    - ``synthetic://<name>?seed=..&width=..&height=..&fps=..&frames=..`` (also ``density``, ``noise``,
      ``time_scale``, ``start_hour``, ``classes=car,person``; ``frames=0`` is endless; without a
      seed, the name picks one; ``fps`` applies when the URI gives no rate);
    - a plain path or ``file://`` URI: a video file (``fps`` applies if it states no rate), or a folder
      of jpg/png images (needs ``fps``);
      relative paths are taken under ``media_root``, and paths that resolve outside it are refused;
    - ``rtsp://``, ``rtsps://``, ``http://``, ``https://``: a network stream with the given timeouts
      in seconds (``fps`` is used if the stream states none).

    Raises SourceError for an unknown scheme, a malformed URI, shell metacharacters or NUL in a path,
    a path outside ``media_root``, a missing or unreadable source, or an unreachable stream.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError(f"camera URI must be a non-empty string, got {uri!r}")
    if "\0" in uri:
        raise SourceError(f"camera URI contains a NUL byte: {redact_url(uri)!r}")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "synthetic":
        return _open_synthetic(uri, fps)
    if scheme in STREAM_SCHEMES:
        return StreamSource(uri, connect_timeout=connect_timeout, read_timeout=read_timeout, fps=fps)
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file URI must name a local path, got host {parts.netloc!r} in {uri}")
        if parts.query or parts.fragment:
            raise SourceError(f"file URI must not have a query or fragment: {uri}")
        return _open_path(unquote(parts.path), media_root=media_root, fps=fps)
    if scheme:
        known = ", ".join(f"{s}://" for s in ("synthetic", "file", *STREAM_SCHEMES))
        raise SourceError(f"unknown camera scheme {scheme!r} in {redact_url(uri)}: use a path or {known}")
    return _open_path(uri, media_root=media_root, fps=fps)


def resolve_media_path(path: str, *, media_root: Path | None = None) -> Path:
    """Return ``path`` made absolute (under ``media_root`` when it is relative and a root is given).

    Raises SourceError when the path holds shell metacharacters or NUL, or resolves (symlinks
    followed) outside ``media_root``.
    """
    bad = sorted({ch for ch in path if ch in SHELL_METACHARACTERS})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        raise SourceError(f"path contains shell metacharacters ({shown}): {path!r}")
    candidate = Path(path)
    if media_root is None:
        return candidate.resolve()
    root = Path(media_root).resolve()
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise SourceError(f"path {path!r} is outside the media root {root}")
    return full


def synthetic_config(uri: str, *, fps: float | None = None) -> tuple[str, SceneConfig]:
    """Return the camera name and SceneConfig that a ``synthetic://`` URI describes.

    ``fps`` is the frame rate when the URI gives none.

    Raises SourceError for a missing name, an unknown or repeated parameter, or a bad value.
    """
    parts = urlsplit(uri)
    name = unquote(parts.netloc + parts.path).strip("/")
    if not name:
        raise SourceError(f"synthetic camera needs a name: synthetic://<name>?seed=..., got {uri!r}")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise SourceError(f"malformed query in {uri!r}: {exc}") from exc
    values: dict[str, object] = {}
    for key, raw in pairs:
        kind = _SYNTHETIC_KEYS.get(key)
        if kind is None:
            raise SourceError(f"unknown parameter {key!r} in {uri!r}; known: {', '.join(_SYNTHETIC_KEYS)}")
        if key in values:
            raise SourceError(f"parameter {key!r} given twice in {uri!r}")
        try:
            values[key] = kind(raw)
        except ValueError:
            raise SourceError(f"parameter {key}={raw!r} in {uri!r} is not a valid {kind.__name__}") from None
    kwargs: dict[str, object] = {"seed": values.pop("seed", seed_from_name(name))}
    if fps is not None and "fps" not in values:
        kwargs["fps"] = fps
    if "frames" in values:
        frames = values.pop("frames")
        kwargs["num_frames"] = None if frames == 0 else frames
    if "classes" in values:
        kwargs["classes"] = tuple(c.strip() for c in str(values.pop("classes")).split(",") if c.strip())
        if not kwargs["classes"]:
            raise SourceError(f"classes in {uri!r} is empty; pick from {', '.join(CLASSES)}")
    kwargs.update(values)
    return name, SceneConfig(**kwargs)  # type: ignore[arg-type]


def _open_synthetic(uri: str, fps: float | None) -> SyntheticCamera:
    name, config = synthetic_config(uri, fps=fps)
    return SyntheticCamera(config, name=name)


def _open_path(path: str, *, media_root: Path | None, fps: float | None) -> CameraSource:
    full = resolve_media_path(path, media_root=media_root)
    if not os.path.lexists(full):
        raise SourceError(f"no such file or folder: {path}")
    if full.is_dir():
        if fps is None:
            raise SourceError(f"image folder {path} needs a frame rate: pass fps")
        return ImageFolderSource(full, fps=fps)
    return VideoFileSource(full, fps=fps)
