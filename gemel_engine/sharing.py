"""Applying a merge plan: tie the members' parameters so one storage serves every model that shares.

This is the one place that performs module surgery. Tying replaces each member's ``weight``/``bias``
attribute with one common ``nn.Parameter``, so:

- the memory is really shared (one storage, checked by ``verify_sharing``);
- moving the models (``ModelSet.to(device)``, see ``gemel_engine.modelset``) moves the shared tensor
  once and keeps it shared;
- one backward pass accumulates every member's gradient into the shared tensor.

Optimizers built before a plan is applied hold the replaced parameters: build them after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gemel_engine.errors import SharingError
from gemel_engine.layers import is_shareable, layer_parameters, layer_signature
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import LayerRef, MergeInstance, MergePlan

WarmStart = Literal["first", "mean"]
WARM_STARTS: tuple[WarmStart, ...] = ("first", "mean")


def resolve_layer(models: Mapping[str, nn.Module], ref: LayerRef) -> nn.Module:
    """Return the module that ``ref`` names.

    Raises:
        SharingError: the model or the layer does not exist, or the layer is not shareable.
    """
    if ref.model not in models:
        raise SharingError(f"plan names model {ref.model!r}, which is not among {sorted(models)}")
    try:
        module = models[ref.model].get_submodule(ref.layer)
    except AttributeError:
        raise SharingError(f"plan names layer {ref}, which model {ref.model!r} does not have") from None
    if not is_shareable(module):
        raise SharingError(f"layer {ref} is a {type(module).__name__}, which is not shareable (Conv or Linear)")
    return module


@dataclass(frozen=True)
class TiedInstance:
    """The parameters one instance now shares, by attribute name (``weight``, ``bias``)."""

    instance: MergeInstance
    parameters: Mapping[str, nn.Parameter]


def _check_compatible(instance: MergeInstance, modules: list[nn.Module], plan: MergePlan) -> None:
    signatures = [layer_signature(module, mode=plan.mode) for module in modules]
    if len(set(signatures)) > 1:
        described = "; ".join(f"{ref} is {sig.key}" for ref, sig in zip(instance.members, signatures, strict=True))
        raise SharingError(f"incompatible layers in one instance ({plan.mode} mode): {described}")
    devices = {p.device for module in modules for p in layer_parameters(module).values()}
    if len(devices) > 1:
        members = ", ".join(str(ref) for ref in instance.members)
        raise SharingError(f"layers {members} live on different devices {sorted(map(str, devices))}")


def _tie_instance(
    instance: MergeInstance, modules: list[nn.Module], warm_start: WarmStart
) -> dict[str, nn.Parameter]:
    shared: dict[str, nn.Parameter] = {}
    for name, keeper in layer_parameters(modules[0]).items():
        if warm_start == "mean":
            with torch.no_grad():
                stacked = torch.stack([layer_parameters(m)[name].detach().float() for m in modules])
                keeper.copy_(stacked.mean(dim=0).to(keeper.dtype))
        for module in modules[1:]:
            setattr(module, name, keeper)
        shared[name] = keeper
    return shared


def apply_plan(
    models: Mapping[str, nn.Module] | ModelSet, plan: MergePlan, *, warm_start: WarmStart = "first"
) -> list[TiedInstance]:
    """Tie the parameters of every instance of ``plan`` in place.

    ``warm_start`` sets the shared tensor's initial value: the first member's weights (``"first"``) or
    the element-wise mean of all members (``"mean"``). The whole plan is checked before any model is
    touched, so a refused plan leaves the models as they were.

    Returns:
        One ``TiedInstance`` per plan instance, in plan order.

    Raises:
        SharingError: a named model or layer is missing or not shareable, members are incompatible under
            the plan's mode (the message names them and their signatures), or live on different devices.
        ValueError: ``warm_start`` is not ``"first"`` or ``"mean"``.
    """
    if warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {', '.join(WARM_STARTS)}, got {warm_start!r}")
    lookup = models.as_dict() if isinstance(models, ModelSet) else models
    resolved = []
    for instance in plan.instances:
        modules = [resolve_layer(lookup, ref) for ref in instance.members]
        _check_compatible(instance, modules, plan)
        resolved.append((instance, modules))
    return [TiedInstance(instance, _tie_instance(instance, modules, warm_start)) for instance, modules in resolved]


def verify_sharing(models: Mapping[str, nn.Module] | ModelSet, plan: MergePlan) -> None:
    """Check that every instance's members hold their parameters in one storage.

    Raises:
        SharingError: some instance's members do not share storage; the message names the first one.
    """
    lookup = models.as_dict() if isinstance(models, ModelSet) else models
    for instance in plan.instances:
        modules = [resolve_layer(lookup, ref) for ref in instance.members]
        for name in layer_parameters(modules[0]):
            pointers = {
                (str(layer_parameters(m)[name].device), layer_parameters(m)[name].untyped_storage().data_ptr())
                for m in modules
            }
            same_object = len({id(layer_parameters(m)[name]) for m in modules}) == 1
            if len(pointers) != 1 and not same_object:
                members = ", ".join(str(ref) for ref in instance.members)
                raise SharingError(f"{name} of {members} is held in {len(pointers)} storages, not one")
