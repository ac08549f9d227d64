"""The fleet load benchmark runs through the real stack and accounts for every message."""

from __future__ import annotations

import json
import subprocess
import sys

from webapp.stack import REPO_ROOT


def test_it_delivers_every_report_and_summary_to_every_browser_and_writes_its_figures(tmp_path):
    out = tmp_path / "dashboard.json"
    result = subprocess.run(
        [sys.executable, "-m", "webapp.loadbench", "--agents", "2", "--clients", "3", "--rate", "2", "--seconds", "2",
         "--database-url", "", "--redis-url", "", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["agents"] == 2 and figures["database"] == "sqlite"
    assert figures["reports_sent"] == 8 and figures["requests_failed"] == 0
    # Browsers 0 and 2 watch box 0, browser 1 box 1: four reports each; and every fleet summary.
    assert figures["node_channel"]["expected"] == 12
    summaries = figures["fleet_channel"]["summaries_sent"]
    assert summaries >= 1  # the fleet's summary, one every FLEET_SUMMARY_SECONDS at most
    assert figures["messages_expected"] == 12 + 3 * summaries
    assert figures["messages_received"] + figures["messages_lost"] == figures["messages_expected"]
    assert figures["messages_lost"] == 0
    assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p95"]
    assert figures["server_cpu_cores"] > 0 and figures["overview_page_ms"]["p50"] > 0
    assert "p95 ms" in result.stdout and "fleet channel" in result.stdout


def test_it_refuses_a_fleet_of_no_agents():
    result = subprocess.run([sys.executable, "-m", "webapp.loadbench", "--agents", "0"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--agents must be at least 1" in result.stderr
