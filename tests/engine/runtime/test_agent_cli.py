"""``python -m gemel_engine agent``: argument errors, retrying an unreachable server, and a clean SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[3]


def _agent(*args: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GEMEL_AGENT_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gemel_engine", "agent", *args, "--state-dir", str(tmp_path / "state"),
         "--device", "cpu"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_it_exits_2_without_a_token(tmp_path):
    process = _agent("--server", "http://127.0.0.1:1", "--node", "edge-1", tmp_path=tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "error: --token is required" in output


def test_it_retries_an_unreachable_server_serving_prometheus_metrics_and_stops_cleanly_on_sigterm(tmp_path):
    port = _closed_port()
    process = _agent("--server", f"http://127.0.0.1:{port}", "--token", "t", "--node", "edge-1",
                     "--budget-mb", "64", "--metrics-port", "0", tmp_path=tmp_path)
    watchdog = threading.Timer(60, process.kill)  # a silent agent must not hang the test on readline
    watchdog.start()
    lines: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if "retrying in" in line:
                break
        else:
            raise AssertionError("the agent never retried:\n" + "".join(lines))
        exporter = re.search(r"Prometheus metrics at (http://\S+/metrics)", "".join(lines))
        assert exporter, "".join(lines)
        scraped = requests.get(exporter.group(1), timeout=10).text
    finally:
        watchdog.cancel()
    assert "gemel_budget_bytes 6.7108864e+07" in scraped, scraped
    assert 'gemel_resident_bytes{kind="shared"} 0.0' in scraped
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "agent stopped" in output
