"""The engine's file I/O helpers, in one place: a file's sha256, an atomic JSON write and a versioned JSON read.

Every JSON document the engine writes (plans, workloads, bundle manifests, search states, layer profiles)
carries its schema number under one key, ``"version"``. Bundle manifests written before that named it
``"format_version"``; ``read_versioned_json`` still accepts that key (documented migration: existing bundles
keep loading) and checks it wherever it is present.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from gemel_engine.errors import GemelError

# The one key that holds a document's schema version.
VERSION_KEY = "version"
# The key bundle manifests used before VERSION_KEY; read (never written) so that old bundles still load.
LEGACY_VERSION_KEY = "format_version"


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``, read in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json_atomically(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``path`` through a synced temporary file in the same folder, then rename it over
    ``path`` (creating the folder if needed); the temporary file never outlives a failure. Returns None.

    Raises:
        OSError: the folder cannot be written.
        TypeError: ``data`` is not JSON-serialisable (nothing is written).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=indent)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_versioned_json(
    path: Path, *, version: int | Collection[int], what: str, error: type[GemelError] = GemelError,
) -> dict[str, Any]:
    """Return the JSON object stored at ``path`` once its schema version is one this build reads.

    ``version`` is that version (or the versions); ``what`` names the document in messages ("workload",
    "search state"). The version is read from ``"version"``; a ``"format_version"`` key (bundle manifests
    before the key was unified) is accepted in its place and, where present, must be readable too.

    Raises:
        error (a GemelError; GemelError itself by default): the file is missing or unreadable, is not JSON,
            is not a JSON object, has no version, or has a version this build does not read. The message
            starts with the path.
    """
    path = Path(path)
    readable = (version,) if isinstance(version, int) else tuple(version)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: cannot read {what}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: not a {what}: expected a JSON object, got {type(data).__name__}")
    keys = [key for key in (VERSION_KEY, LEGACY_VERSION_KEY) if key in data]
    if not keys:
        raise error(f"{path}: {what} has no {VERSION_KEY!r}")
    for key in keys:
        if data[key] not in readable or isinstance(data[key], bool):
            reads = ", ".join(map(str, readable))
            raise error(
                f"{path}: unsupported {what} {key.replace('_', ' ')} {data[key]!r}; this build reads version {reads}"
            )
    return data
