"""Model registration: weights are read without running code, checked against the architecture, and nothing
is kept on disk when a check fails."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile

from tests.webapp.test_workloads_factories import TINY_ARCH, write_weights
from webapp.workloads.models import ModelEntry
from webapp.workloads.services import model_delete, model_register

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> bytes:
    """Safetensors bytes of the tiny architecture with a 2-output head."""
    return write_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors").read_bytes()


def upload(data: bytes, name: str = "weights.safetensors") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def register(weights: UploadedFile, **kwargs) -> ModelEntry:
    kwargs.setdefault("name", "tiny")
    kwargs.setdefault("arch", TINY_ARCH)
    kwargs.setdefault("builder_args", {"num_classes": 2})
    return model_register(weights=weights, **kwargs)


def media_files() -> list[str]:
    root = Path(django_settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_it_stores_valid_safetensors_with_their_checksum_size_and_parameter_bytes(tiny_weights):
    entry = register(upload(tiny_weights))
    assert entry.weights_sha256 == hashlib.sha256(tiny_weights).hexdigest()
    assert entry.weights_size == len(tiny_weights)
    assert 0 < entry.param_bytes < len(tiny_weights)
    assert media_files() == [entry.weights.name]


def test_it_accepts_a_plain_pt_state_dict_through_weights_only_loading(tmp_path):
    from safetensors.torch import load_file

    path = write_weights(tmp_path / "w.safetensors")
    buffer = io.BytesIO()
    torch.save(load_file(str(path)), buffer)
    entry = register(upload(buffer.getvalue(), "w.pt"))
    assert entry.weights.name.endswith(".pt")


class _Exploit:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_a_malicious_pickle_never_runs_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"conv.weight": _Exploit(target)})
    with pytest.raises(ValidationError, match="cannot read weights safely"):
        register(upload(payload, "evil.pt"))
    assert not target.exists()
    buffer = io.BytesIO()
    torch.save({"conv.weight": _Exploit(target)}, buffer)  # the zip format of torch.save, same exploit inside
    with pytest.raises(ValidationError, match="cannot read weights safely"):
        register(upload(buffer.getvalue(), "evil2.pth"))
    assert not target.exists()
    assert media_files() == [] and not ModelEntry.objects.exists()


def test_truncated_safetensors_are_refused(tiny_weights):
    with pytest.raises(ValidationError, match="cannot read weights safely"):
        register(upload(tiny_weights[: len(tiny_weights) // 2]))
    assert media_files() == []


def test_tampered_safetensors_header_is_refused(tiny_weights):
    (length,) = struct.unpack("<Q", tiny_weights[:8])
    header = json.loads(tiny_weights[8 : 8 + length])
    first = next(key for key in header if key != "__metadata__")
    header[first]["data_offsets"][1] += 1_000_000  # points past the end of the file
    raw = json.dumps(header).encode()
    with pytest.raises(ValidationError, match="cannot read weights safely"):
        register(upload(struct.pack("<Q", len(raw)) + raw + tiny_weights[8 + length :]))
    assert media_files() == []


def test_weights_of_another_architecture_are_refused_listing_the_keys(tmp_path):
    other = write_weights(tmp_path / "r.safetensors", arch="resnet18").read_bytes()
    with pytest.raises(ValidationError) as caught:
        register(upload(other))
    message = caught.value.messages[0]
    assert "missing" in message and "unexpected" in message
    assert media_files() == []


def test_a_head_of_another_size_is_refused_as_mis_shaped(tiny_weights):
    with pytest.raises(ValidationError, match="mis-shaped"):
        register(upload(tiny_weights), builder_args={"num_classes": 5})


def test_an_oversized_upload_is_refused_before_it_is_read(settings):
    settings.MAX_WEIGHTS_UPLOAD_MB = 1

    class Unreadable(io.RawIOBase):
        def read(self, *args):
            raise AssertionError("the upload was read")

    big = UploadedFile(Unreadable(), name="big.safetensors", size=2 * 1024 * 1024)
    with pytest.raises(ValidationError, match="over the limit of 1 MiB"):
        register(big)
    assert media_files() == []


def test_an_upload_that_lies_about_its_size_is_cut_off_at_the_limit(settings):
    settings.MAX_WEIGHTS_UPLOAD_MB = 1
    liar = upload(b"\0" * (2 * 1024 * 1024))
    liar.size = 10
    with pytest.raises(ValidationError, match="over the limit"):
        register(liar)
    assert media_files() == []


def test_an_unknown_architecture_error_lists_known_ones(tiny_weights):
    with pytest.raises(ValidationError, match=r"unknown architecture 'alexnet'; known ones include .*resnet"):
        register(upload(tiny_weights), arch="alexnet")


@pytest.mark.parametrize("builder_args", [{"weights": "DEFAULT"}, {"num_classes": [1, 2]}, {"no_such_arg": 1}])
def test_builder_arguments_that_could_download_or_do_not_fit_are_refused(tiny_weights, builder_args):
    with pytest.raises(ValidationError):
        register(upload(tiny_weights), builder_args=builder_args)
    assert media_files() == []


def test_a_weights_file_of_another_kind_is_refused(tiny_weights):
    with pytest.raises(ValidationError, match="weights must be one of"):
        register(upload(tiny_weights, "weights.npz"))


def test_deleting_a_model_removes_its_weights_file(tiny_weights, django_capture_on_commit_callbacks):
    entry = register(upload(tiny_weights))
    with django_capture_on_commit_callbacks(execute=True):
        model_delete(model=entry)
    assert media_files() == []
