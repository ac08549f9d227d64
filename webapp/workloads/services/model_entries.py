"""Registering models: checked builder arguments, uploads spooled and checked before they are stored."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from torch import nn

from gemel_engine import zoo
from gemel_engine.errors import GemelError
from gemel_engine.fileio import file_sha256
from gemel_engine.memory import model_param_bytes
from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.models import ModelEntry
from webapp.workloads.services.common import check_unique_name, delete_unused

_FORBIDDEN_BUILDER_ARGS = frozenset({"weights", "weights_backbone", "progress"})
# Largest magnitude of a numeric builder argument: room for class counts, image sides and proposal counts,
# far below what overflows a builder's arithmetic (an anchor_scale or width_mult of 1e308).
MAX_BUILDER_NUMBER = 10_000
# Longest string builder argument, in characters.
MAX_BUILDER_STRING_CHARS = 100
_LISTED_ARCHS = 8


def _check_arch(arch: str) -> zoo.ArchSpec:
    try:
        return zoo.get_spec(arch)
    except GemelError:
        known = zoo.list_models()
        shown = ", ".join(known[:_LISTED_ARCHS])
        raise ValidationError(
            f"unknown architecture {arch!r}; known ones include {shown} ({len(known)} in all)"
        ) from None


def _check_builder_args(builder_args: Any) -> dict[str, Any]:
    if builder_args is None:
        return {}
    if not isinstance(builder_args, dict):
        raise ValidationError("builder_args must be a JSON object")
    for key, value in builder_args.items():
        if not isinstance(key, str) or key in _FORBIDDEN_BUILDER_ARGS:
            raise ValidationError(f"builder argument {key!r} is not allowed")
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ValidationError(f"builder argument {key!r} must be a number, string, boolean or null")
        # NaN and infinities fail the comparison too.
        if isinstance(value, int | float) and not abs(value) <= MAX_BUILDER_NUMBER:
            raise ValidationError(
                f"builder argument {key!r} must be a finite number within ±{MAX_BUILDER_NUMBER}, got {value!r}"
            )
        if isinstance(value, str) and len(value) > MAX_BUILDER_STRING_CHARS:
            raise ValidationError(f"builder argument {key!r} is longer than {MAX_BUILDER_STRING_CHARS} characters")
    return dict(builder_args)


def build_meta(arch: str, builder_args: dict[str, Any]) -> nn.Module:
    """Return the architecture built on the meta device (no memory) with ``builder_args``.

    Raises:
        ValidationError: the architecture's builder refuses the arguments.
    """
    # Whatever the builder raises for arguments it cannot take is the operator's input, never a server error.
    try:
        return zoo.get_model(arch, device="meta", **builder_args)
    except (TypeError, ValueError, ArithmeticError, GemelError) as exc:
        raise ValidationError(f"{arch} does not accept builder_args {builder_args}: {exc}") from None


def _max_weights_bytes() -> int:
    return int(settings.MAX_WEIGHTS_UPLOAD_MB) * 1024 * 1024


def _spool_upload(weights: UploadedFile, target: Path) -> str:
    """Write the upload to ``target`` chunk by chunk (stopping at the size limit) and return its sha256."""
    limit = _max_weights_bytes()
    digest = hashlib.sha256()
    written = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for chunk in weights.chunks():
            written += len(chunk)
            if written > limit:
                raise ValidationError(f"weights file is over the limit of {settings.MAX_WEIGHTS_UPLOAD_MB} MiB")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _checked_param_bytes(*, arch: str, builder_args: dict[str, Any], spooled: Path) -> int:
    """Return the parameter bytes of ``arch`` after checking the weights in ``spooled`` fit it key by key.

    Raises:
        ValidationError: builder arguments the architecture refuses, or weights unsafe, corrupt or unfit.
    """
    with about("builder_args"):
        model = build_meta(arch, builder_args)
    try:
        state = zoo.read_state_dict(spooled, max_bytes=_max_weights_bytes())
        zoo.check_state_dict(model, state, source="weights")
    except GemelError as exc:
        raise ValidationError({"weights": str(exc).replace(str(spooled), "weights")}) from None
    return model_param_bytes(model)


@transaction.atomic
def _store_weights(*, name: str, arch: str, builder_args: dict[str, Any], spooled: Path, sha256: str,
                   param_bytes: int) -> ModelEntry:
    """Move checked weights from ``spooled`` into MEDIA_ROOT/weights/ and save their row (the file goes if it fails)."""
    check_unique_name(ModelEntry, name)
    relative = f"weights/{uuid.uuid4().hex}{spooled.suffix}"
    final = Path(settings.MEDIA_ROOT) / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(spooled, final)
    entry = ModelEntry(
        name=name, arch=arch, builder_args=builder_args, weights=relative, weights_sha256=sha256,
        weights_size=final.stat().st_size, param_bytes=param_bytes,
    )
    try:
        entry.full_clean()
        entry.save()
    except Exception:
        final.unlink(missing_ok=True)
        raise
    return entry


def _register_spooled(*, name: str, arch: str, builder_args: dict[str, Any], spooled: Path, sha256: str) -> ModelEntry:
    """Check the weights in ``spooled`` (outside any transaction: it takes a while) and keep them."""
    check_unique_name(ModelEntry, name)
    param_bytes = _checked_param_bytes(arch=arch, builder_args=builder_args, spooled=spooled)
    return _store_weights(name=name, arch=arch, builder_args=builder_args, spooled=spooled, sha256=sha256,
                          param_bytes=param_bytes)


def _spool_path(suffix: str) -> Path:
    return Path(settings.MEDIA_ROOT) / "uploads-tmp" / f"{uuid.uuid4().hex}{suffix}"


def _weights_suffix(filename: str) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in zoo.WEIGHT_SUFFIXES:
        raise ValidationError(f"weights must be one of {', '.join(zoo.WEIGHT_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    return suffix


def model_register(
    *, name: str, arch: str, weights: UploadedFile, builder_args: dict[str, Any] | None = None
) -> ModelEntry:
    """Register an uploaded model: weights read safely (safetensors, or ``torch.load(weights_only=True)``),
    checked key by key against ``arch`` built on the meta device with ``builder_args``.

    Nothing stays on disk when any check fails.

    Returns:
        The saved model, with its sha256, file size and parameter bytes.

    Raises:
        ValidationError: a taken name, an unknown architecture (a few known ones are listed), builder
            arguments the architecture refuses, a file over MAX_WEIGHTS_UPLOAD_MB (refused before reading
            it), an unsafe, corrupt or truncated file, or weights that do not fit (missing, unexpected and
            mis-shaped keys listed).
    """
    with about("name"):
        name = clean_name(name, "model")
    with about("arch"):
        _check_arch(arch)
    with about("builder_args"):
        builder_args = _check_builder_args(builder_args)
    with about("weights"):
        suffix = _weights_suffix(weights.name)
        if weights.size is not None and weights.size > _max_weights_bytes():
            raise ValidationError(f"weights file is over the limit of {settings.MAX_WEIGHTS_UPLOAD_MB} MiB")
    spooled = _spool_path(suffix)
    try:
        with about("weights"):
            sha256 = _spool_upload(weights, spooled)
        return _register_spooled(name=name, arch=arch, builder_args=builder_args, spooled=spooled, sha256=sha256)
    finally:
        spooled.unlink(missing_ok=True)


def model_register_file(*, name: str, arch: str, path: Path, builder_args: dict[str, Any] | None = None) -> ModelEntry:
    """Register a model from a weights file on this machine (the demo seed); the file is copied, not moved.

    Raises:
        ValidationError: as for ``model_register``.
    """
    name = clean_name(name, "model")
    _check_arch(arch)
    builder_args = _check_builder_args(builder_args)
    spooled = _spool_path(_weights_suffix(path.name))
    spooled.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(path, spooled)
        return _register_spooled(name=name, arch=arch, builder_args=builder_args, spooled=spooled,
                                 sha256=file_sha256(spooled))
    finally:
        spooled.unlink(missing_ok=True)


@transaction.atomic
def model_update(*, model: ModelEntry, name: str) -> ModelEntry:
    """Rename a model (its weights and architecture are fixed once validated).

    Raises:
        ValidationError: an empty or taken name.
    """
    with about("name"):
        name = clean_name(name, "model")
    check_unique_name(ModelEntry, name, exclude=model.pk)
    model.name = name
    model.save(update_fields=["name"])
    return model


@transaction.atomic
def model_delete(*, model: ModelEntry) -> None:
    """Delete a model and its weights file.

    Raises:
        ValidationError: queries still use it (they are named).
    """
    delete_unused(model, "model", model.weights)
