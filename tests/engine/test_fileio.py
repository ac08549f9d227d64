"""The engine's file helpers: an atomic JSON write that leaves nothing behind, a versioned read that says why."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gemel_engine.errors import GemelError, PlanError
from gemel_engine.fileio import file_sha256, read_versioned_json, write_json_atomically


def test_a_files_sha256_is_that_of_its_bytes(tmp_path: Path):
    path = tmp_path / "blob"
    path.write_bytes(b"gemel" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"gemel" * 1000).hexdigest()


def test_an_atomic_write_that_fails_leaves_neither_a_file_nor_a_temporary_one(tmp_path: Path):
    path = tmp_path / "sub" / "state.json"
    write_json_atomically(path, {"version": 1})
    with pytest.raises(TypeError):
        write_json_atomically(path, {"version": 1, "bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_versioned_read_returns_the_object_of_a_version_it_reads(tmp_path: Path):
    path = tmp_path / "doc.json"
    write_json_atomically(path, {"version": 2, "x": 1})
    assert read_versioned_json(path, version=2, what="doc") == {"version": 2, "x": 1}
    assert read_versioned_json(path, version=(1, 2), what="doc")["x"] == 1


def test_a_manifest_of_the_old_key_is_read_and_the_old_key_is_checked_where_present(tmp_path: Path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format_version": 1}))
    assert read_versioned_json(path, version=1, what="bundle") == {"format_version": 1}
    path.write_text(json.dumps({"version": 1, "format_version": 2}))
    with pytest.raises(GemelError, match="unsupported bundle format version 2; this build reads version 1"):
        read_versioned_json(path, version=1, what="bundle")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"cannot read merge plan: no such file"),
        ("{broken", "merge plan is not readable JSON"),
        ("[1, 2]", "not a merge plan: expected a JSON object, got list"),
        ('{"instances": []}', "merge plan has no 'version'"),
        ('{"version": 9}', "unsupported merge plan version 9; this build reads version 1"),
        ('{"version": true}', "unsupported merge plan version True"),
    ],
)
def test_a_versioned_read_refuses_with_the_callers_error_naming_the_file(tmp_path: Path, text, message):
    path = tmp_path / "plan.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(PlanError, match=message) as caught:
        read_versioned_json(path, version=1, what="merge plan", error=PlanError)
    assert str(caught.value).startswith(str(path))
