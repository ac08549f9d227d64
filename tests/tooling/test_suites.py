"""The side-by-side runner (tests/suites.py) reports every suite whole and fails when any suite fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSING = "def test_it_passes():\n    assert True\n"
FAILING = "def test_it_fails():\n    assert False, 'the failing suite failed'\n"


def _suite(folder: Path, name: str, body: str) -> Path:
    folder.mkdir()
    (folder / f"test_{name}.py").write_text(body)
    return folder


def _plain_pytest_environment() -> dict[str, str]:
    """Plain pytest in a scratch folder: none of this project's plugins or settings."""
    env = {**os.environ, "PYTEST_ADDOPTS": "-p no:django -p no:cacheprovider", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _run(*targets: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.suites", *map(str, targets)],
        cwd=cwd, env=_plain_pytest_environment(), capture_output=True, text=True, timeout=120, check=False,
    )


def test_a_failing_suite_fails_the_run_and_every_suites_report_is_printed_whole(tmp_path):
    passing = _suite(tmp_path / "passing", "passing", PASSING)
    failing = _suite(tmp_path / "failing", "failing", FAILING)
    result = _run(passing, failing, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    first, second = result.stdout.index("1 passed"), result.stdout.index("1 failed")
    assert first < second, "the kept report came before the live one ended"
    assert "the failing suite failed" in result.stdout[first:]
    assert result.stdout.rstrip().endswith(f"suites: {passing} passed, {failing} failed")


def test_suites_that_all_pass_pass_the_run_and_one_argument_may_name_several_paths(tmp_path):
    one = _suite(tmp_path / "one", "one", PASSING)
    two = _suite(tmp_path / "two", "two", PASSING)
    three = _suite(tmp_path / "three", "three", PASSING)
    result = _run(Path(f"{one} {two}"), three, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "2 passed" in result.stdout and "1 passed" in result.stdout


def test_a_run_ended_by_sigterm_stops_every_suite_and_prints_what_the_kept_ones_wrote(tmp_path):
    started = tmp_path / "started"
    slow = f"import time\n\ndef test_it_runs_until_stopped():\n    open({str(started)!r}, 'w').close()\n" \
           "    time.sleep(600)\n"
    live = _suite(tmp_path / "live", "live", slow.replace("started", "live-started"))
    kept = _suite(tmp_path / "kept", "kept", slow)
    runner = subprocess.Popen([sys.executable, "-m", "tests.suites", str(live), str(kept)], cwd=tmp_path,
                              env=_plain_pytest_environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(started.exists, timeout=60, what="the kept suite's test to start")
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode != 0
    assert f"suites: {kept} was stopped; what it wrote:" in output
    assert "test_kept.py" in output.split("was stopped")[1], "the kept suite's output was not printed"
