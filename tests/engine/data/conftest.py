"""Fixtures for the camera/frame tests: tiny clips and videos, local HTTP servers and dead listeners."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemel_engine.data.synthetic import SceneConfig, SyntheticCamera
from gemel_engine.data.video import write_video
from tests.engine.data.support import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE


@pytest.fixture(scope="session")
def clip() -> list[np.ndarray]:
    """Return 12 synthetic 64x48 RGB frames whose content changes every frame."""
    cam = SyntheticCamera(
        SceneConfig(seed=5, width=CLIP_SIZE[0], height=CLIP_SIZE[1], num_frames=CLIP_FRAMES)
    )
    images = [f.image.copy() for f in cam.frames()]
    for i, image in enumerate(images):
        image[:4, :4] = 20 * i
    return images


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory, clip: list[np.ndarray]) -> dict[str, Path]:
    """Return tiny videos of the clip keyed by '<suffix>-<codec>' (mp4-h264, mp4-mpeg4, avi-mjpeg...)."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for suffix, codec in (("mp4", "h264"), ("mp4", "mpeg4"), ("avi", "mjpeg"), ("mkv", "h264")):
        path = root / f"clip-{codec}.{suffix}"
        write_video(clip, path, fps=CLIP_FPS, codec=codec)
        out[f"{suffix}-{codec}"] = path
    return out


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Return a port on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[Path, ThreadingHTTPServer]]:
    """Serve a temporary folder over HTTP on 127.0.0.1; return (folder, server)."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, server
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)
