"""`make setup` installs the project into its virtualenv: a `gemel` command that works from any folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_gemel_command_is_installed_beside_the_interpreter_and_runs_from_any_folder(tmp_path: Path):
    command = Path(sys.executable).parent / "gemel"
    assert command.is_file(), "run `make setup`: it installs the project and its `gemel` command"
    done = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gemel ") and "merge" in done.stdout
    module = subprocess.run([sys.executable, "-m", "gemel_engine", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert module.returncode == 0 and module.stdout.startswith("usage: python -m gemel_engine ")
