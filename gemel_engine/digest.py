"""The one way the engine (and the web app, through it) fingerprints a file."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``, read in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
