"""`make run` (python -m webapp.run): the stack comes up on embedded defaults, Ctrl-C stops all of it, and a
second start reuses what the first made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.waiting import wait_until
from webapp.embedded_redis import ping, socket_url
from webapp.run import DEVELOPMENT_NOTICE
from webapp.stack import REPO_ROOT, free_port


def _children(pid: int) -> dict[int, str]:
    listing = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in listing.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "GEMEL_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    for name in ("REDIS_URL", "DATABASE_URL", "GEMEL_MEDIA_DIR"):
        env.pop(name, None)
    run = subprocess.Popen(
        [sys.executable, "-m", "webapp.run", "--port", str(port), "--demo-scale", "none"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run.poll() is None:
        line = run.stdout.readline()
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    return run, "".join(lines)


def _stop(run: subprocess.Popen[str]) -> int:
    run.send_signal(signal.SIGINT)
    try:
        return run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()


def test_it_starts_every_process_and_ctrl_c_stops_them_all_then_a_second_start_reuses_the_operator(tmp_path):
    port = free_port()
    run, output = _start(tmp_path, port)
    try:
        assert f"dashboard  http://127.0.0.1:{port}/" in output, output
        assert "sign in    admin / " in output, output
        assert DEVELOPMENT_NOTICE in output, output
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        children = _children(run.pid)
        commands = " ".join(children.values())
        for part in ("daphne", "celery", "gemel_engine agent", "redis-server"):
            assert part in commands, commands
        # Two workers: demo builds on one of their own, so merges and measurements never wait behind them.
        assert "--queues merge,measure,celery" in commands and "--queues demo,measure" in commands, commands
    finally:
        status = _stop(run)
    assert status == 0
    wait_until(lambda: not [command for pid, command in children.items() if _alive(pid)], timeout=60,
               what="every child process to exit", context=lambda: str(children))
    assert not ping(socket_url(tmp_path / "redis" / "redis.sock"))

    again, output = _start(tmp_path, port)
    try:
        assert "sign in    admin (password from GEMEL_ADMIN_PASSWORD or shown at the first start)" in output, output
    finally:
        assert _stop(again) == 0


def test_a_bad_redis_url_fails_at_start_up_naming_the_variable(tmp_path):
    env = {**os.environ, "GEMEL_DATA_DIR": str(tmp_path), "REDIS_URL": "http://nope"}
    result = subprocess.run(
        [sys.executable, "-m", "webapp.run", "--demo-scale", "none"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "REDIS_URL must be a redis://" in result.stderr
