"""The dashboard load benchmark runs through the real stack and accounts for every message."""

from __future__ import annotations

import json
import subprocess
import sys

from webapp.stack import REPO_ROOT


def test_it_delivers_every_report_to_every_client_and_writes_its_figures(tmp_path):
    out = tmp_path / "dashboard.json"
    result = subprocess.run(
        [sys.executable, "-m", "webapp.loadbench", "--clients", "3", "--rate", "2", "--seconds", "2",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["reports_sent"] == 4
    assert figures["messages_expected"] == 12
    assert figures["messages_received"] + figures["messages_lost"] == 12
    assert figures["messages_lost"] == 0
    assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p95"]
    assert "p95 ms" in result.stdout
