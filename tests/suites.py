"""Run test suites side by side, each in a pytest process of its own, and report them one after another.

``python -m tests.suites "tests/engine tests/tooling" tests/webapp`` starts one pytest per argument at once (an
argument may name several paths, separated by spaces). The web tests keep about one core busy (Django, real
worker processes waiting on each other) while the engine tests train small models, so on two cores the two
together take little longer than the slower one alone. The processes share nothing: each has its own session
fixtures, its own private Redis and its own temporary folders.

Their math libraries' threads wait passively (OMP_WAIT_POLICY=PASSIVE, unless it is set already): torch's
OpenMP threads otherwise spin while they wait, and torch processes that each spin a thread per core on a machine
they share slow one another down many times over.

The first suite's output is shown as it runs; the others' are kept in files (unbuffered, so they can be followed
as they grow) and printed whole, each after the suite before it, so no two reports interleave; a run that is
interrupted still prints what they wrote. The exit status is 0 only when every suite passed.
PYTEST_ADDOPTS and the rest of the environment reach every suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass
class Suite:
    """One pytest process: the paths it runs, where its output goes, and the process once started."""

    target: str
    output: IO[bytes] | None
    log_path: Path | None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Suite:
        """Start pytest on the target's paths (OpenMP threads waiting passively, output unbuffered); return self."""
        env = {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **os.environ}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *self.target.split()],
            stdout=self.output, stderr=subprocess.STDOUT, env=env,
        )
        return self

    def wait(self) -> int:
        """Wait for pytest to exit; return its exit status."""
        assert self.process is not None
        return self.process.wait()

    def print_log(self) -> None:
        """Copy the kept output to this process's stdout (nothing for the suite shown live)."""
        if self.log_path is None:
            return
        sys.stdout.flush()
        with self.log_path.open("rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
        sys.stdout.buffer.flush()

    def stop(self) -> None:
        """End pytest if it is still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def verdict(status: int) -> str:
    """Return what pytest's exit status says, in words."""
    return {0: "passed", 1: "failed", 2: "interrupted", 3: "internal error", 4: "usage error",
            5: "ran no test"}.get(status, f"exited {status}")


def _end_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(targets: list[str], logs: Path) -> int:
    """Run one pytest per target at once; return 0 when all passed, else 1.

    Interrupted (Ctrl-C, SIGTERM), it stops every suite and still prints what the kept ones wrote.
    """
    suites = [Suite(targets[0], None, None)]
    files = []
    for index, target in enumerate(targets[1:], start=1):
        path = logs / f"suite-{index}.log"
        files.append(path.open("wb"))
        suites.append(Suite(target, files[-1], path))
        print(f"suites: {target} runs beside this report, writing to {path}; its report follows", flush=True)
    previous_handler = signal.signal(signal.SIGTERM, _end_on_sigterm)
    unprinted = list(suites)
    try:
        for suite in suites:
            suite.start()
        statuses = []
        for suite in suites:
            statuses.append(suite.wait())
            suite.print_log()
            unprinted.remove(suite)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        for suite in suites:
            suite.stop()
        for file in files:
            file.close()
        for suite in unprinted:
            if suite.log_path is not None:
                print(f"suites: {suite.target} was stopped; what it wrote:", flush=True)
                suite.print_log()
    summary = ", ".join(f"{suite.target} {verdict(status)}" for suite, status in zip(suites, statuses, strict=True))
    print(f"suites: {summary}", flush=True)
    return 0 if all(status == 0 for status in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the folders to run and run them side by side; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.suites", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="test paths, a pytest process per argument; the first is shown live")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gemel-suites-") as logs:
        return run(args.targets, Path(logs))


if __name__ == "__main__":
    sys.exit(main())
