"""Byte accounting: per tensor, per layer, per model, and the real footprint of a set of models.

A footprint is measured by unique storage: a tensor that several models share is counted once, so
the savings of a tied set are read off the tensors themselves rather than assumed from a plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gemel_engine.modelset import ModelSet


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Return the bytes of ``tensor``'s elements (``numel × element_size``), valid on any device."""
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    pointer = tensor.untyped_storage().data_ptr()
    if pointer == 0:  # meta tensors and empty storages have no address: fall back to the tensor object
        return ("object", id(tensor))
    return (str(tensor.device), pointer)


def _storage_bytes(tensor: torch.Tensor) -> int:
    if tensor.untyped_storage().data_ptr() == 0:
        return tensor_bytes(tensor)
    return tensor.untyped_storage().nbytes()


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Return the bytes of the distinct storages behind ``tensors`` (a storage seen twice counts once)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        seen.setdefault(_storage_key(tensor), _storage_bytes(tensor))
    return sum(seen.values())


def _models(models: nn.Module | Mapping[str, nn.Module] | Iterable[nn.Module]) -> list[nn.Module]:
    if isinstance(models, ModelSet):
        return list(models.as_dict().values())
    if isinstance(models, nn.Module):
        return [models]
    if isinstance(models, Mapping):
        return list(models.values())
    return list(models)


def _all_parameters(models: list[nn.Module]) -> Iterator[torch.Tensor]:
    for model in models:
        yield from model.parameters()


def _all_buffers(models: list[nn.Module]) -> Iterator[torch.Tensor]:
    for model in models:
        yield from model.buffers()


@dataclass(frozen=True)
class Footprint:
    """Memory held by a set of models, in bytes."""

    # Bytes of parameters if every model kept its own copy (the unmerged size).
    naive_param_bytes: int
    # Bytes of the distinct parameter storages actually held.
    param_bytes: int
    # Bytes of the distinct buffer storages (BatchNorm statistics...).
    buffer_bytes: int

    @property
    def total_bytes(self) -> int:
        """Return parameter plus buffer bytes actually held."""
        return self.param_bytes + self.buffer_bytes

    @property
    def saved_param_bytes(self) -> int:
        """Return the parameter bytes that sharing saves."""
        return self.naive_param_bytes - self.param_bytes


def footprint(models: nn.Module | Mapping[str, nn.Module] | Iterable[nn.Module]) -> Footprint:
    """Return the measured footprint of ``models``: storages shared between or within models count once."""
    members = _models(models)
    naive = sum(model_param_bytes(model) for model in members)
    return Footprint(
        naive_param_bytes=naive,
        param_bytes=unique_storage_bytes(_all_parameters(members)),
        buffer_bytes=unique_storage_bytes(_all_buffers(members)),
    )


def model_param_bytes(model: nn.Module) -> int:
    """Return the bytes of ``model``'s distinct parameters (as ``model.parameters()`` yields them)."""
    return sum(tensor_bytes(parameter) for parameter in model.parameters())


@dataclass(frozen=True)
class LayerMemory:
    """Bytes held directly by one module (not its children)."""

    path: str
    kind: str
    param_bytes: int
    buffer_bytes: int


def layer_memory(model: nn.Module) -> list[LayerMemory]:
    """Return, in module order, every module that directly holds parameters or buffers, with its bytes."""
    layers = []
    for path, module in model.named_modules():
        params = sum(tensor_bytes(p) for p in module.parameters(recurse=False))
        buffers = sum(tensor_bytes(b) for b in module.buffers(recurse=False))
        if params or buffers:
            layers.append(LayerMemory(path, type(module).__name__, params, buffers))
    return layers
