"""Start and stop the dashboard's processes: the embedded Redis, daphne, Celery workers and the edge agent.

Used by `make run` (``manage.py gemel_stack``) and by the tests that need a live stack. Every child runs
in its own session so that stopping the stack stops each whole process tree.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from django.conf import settings

REPO_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    """A process of the stack did not start or answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """Return a ``DATABASE_URL`` for Django database settings (so a child process uses the same database)."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    if engine.endswith("postgresql"):
        user = settings_dict.get("USER") or ""
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise StackError(f"cannot hand database engine {engine} to a child process")


def child_environment(**overrides: str) -> dict[str, str]:
    """Return this process's environment with the repo on PYTHONPATH and ``overrides`` applied."""
    env = {**os.environ, **overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def daphne_command(host: str, port: int) -> list[str]:
    """Return the command line of the ASGI server."""
    return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "webapp.asgi:application"]


# Every queue a task is routed to and Celery's default one, as settings routes them.
ALL_QUEUES: tuple[str, ...] = tuple(settings.WORKER_QUEUES)


def celery_worker_command(*, queues: Sequence[str] = ALL_QUEUES, name: str = "worker") -> list[str]:
    """Return the command line of a Celery worker taking ``queues`` (every queue by default; one process,
    prefetch 1: merge jobs are long and heavy)."""
    return [
        sys.executable, "-m", "celery", "-A", "webapp", "worker", "--loglevel", "INFO",
        "--queues", ",".join(queues), "--concurrency", "1", "--pool", "prefork",
        "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
    ]


def worker_processes(env: Mapping[str, str], logs: Path, *, merge_workers: int) -> list[ManagedProcess]:
    """Return the Celery workers of one machine, not started: ``merge_workers`` workers taking merge jobs and
    measurements (several jobs run at once, one a worker, each holding its claim), and a builder taking demo builds
    and training runs, and measurements too: a long build holds only the builder, so measurements and merges go
    on meanwhile. Several workers on one machine wait for OpenMP passively instead of spinning on shared cores."""
    env = {**env}
    if merge_workers > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    general = (settings.QUEUE_MERGE, settings.QUEUE_MEASURE, settings.CELERY_TASK_DEFAULT_QUEUE)
    workers = [
        ManagedProcess(f"worker {i} (merges, measurements)", celery_worker_command(queues=general, name=f"worker{i}"),
                       env, logs / f"worker{i}.log")
        for i in range(1, merge_workers + 1)
    ]
    builder = ManagedProcess("builder (demo builds, training, measurements)", celery_worker_command(
        queues=(settings.QUEUE_DEMO, settings.QUEUE_MEASURE), name="builder"), env, logs / "builder.log")
    return [*workers, builder]


@dataclass
class ManagedProcess:
    """A child process with a name, its log file and a readiness probe."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        """Start the process, appending its output to ``log_path``; return self."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - commands built above, never from user input
                self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the process's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_for_log(self, needle: str, *, timeout: float = 60.0) -> None:
        """Wait until ``needle`` appears in the log.

        Raises:
            StackError: the process exited or the text did not appear within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_tail(200_000):
                return
            if not self.running:
                raise StackError(f"{self.name} exited:\n{self.log_tail()}")
            time.sleep(0.1)
        raise StackError(f"{self.name} did not log {needle!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def wait_for_http(self, url: str, *, timeout: float = 60.0) -> None:
        """Wait until ``url`` answers 200.

        Raises:
            StackError: the process exited or the URL did not answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise StackError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise StackError(f"{self.name} did not answer {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group."""
        if self.running and self.process is not None:
            os.killpg(self.process.pid, signum)

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        self.process = None
