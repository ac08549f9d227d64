"""Which layers can share weights: signatures, shareable-layer walks, merge instances, structural optimum.

Conv and Linear layers are shareable; normalisation layers stay per model. Two matching modes:

- ``exact`` (the paper's): same layer type, every hyperparameter and every parameter shape;
- ``shape``: same layer type, parameter shapes, dtype and ``groups``. Stride, padding, dilation and
  padding mode may differ: they shape the computation, not the weights, so one tensor serves both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from gemel_engine.memory import model_param_bytes, tensor_bytes
from gemel_engine.plan import LayerRef, MatchMode, MergeInstance, MergePlan, check_match_mode

SHAREABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
SHARED_PARAMETER_NAMES = ("weight", "bias")
_CONV_HYPERPARAMETERS = ("stride", "padding", "dilation", "padding_mode", "output_padding")


@dataclass(frozen=True, order=True)
class LayerSignature:
    """What two layers must have in common to share one copy of their weights."""

    # Base layer type (``Conv2d``, ``Linear``...); subclasses map to their shareable base.
    kind: str
    # Shapes of the weight and, if present, the bias.
    shapes: tuple[tuple[int, ...], ...]
    # Parameter dtype, e.g. ``float32``.
    dtype: str
    # Convolution groups (1 for Linear).
    groups: int
    # Hyperparameters that must also match; empty in ``shape`` mode.
    hyperparameters: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Return a stable, human-readable text form, unique per signature."""
        shapes = " ".join("x".join(str(d) for d in shape) for shape in self.shapes)
        text = f"{self.kind}[{shapes}] {self.dtype} g{self.groups}"
        for name, value in self.hyperparameters:
            shown = "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            text += f" {name}={shown}"
        return text

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class ShareableLayer:
    """A layer whose parameters can be shared, as found in one model."""

    path: str
    module: nn.Module = field(repr=False, compare=False)
    signature: LayerSignature
    # Bytes of the layer's parameters (weight and bias).
    param_bytes: int


def _shareable_kind(module: nn.Module) -> str | None:
    for base in SHAREABLE_TYPES:
        if isinstance(module, base):
            return base.__name__
    return None


def is_shareable(module: nn.Module) -> bool:
    """Return whether ``module`` is a layer type whose weights Gemel shares (materialised Conv or Linear)."""
    if _shareable_kind(module) is None:
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and not isinstance(weight, nn.parameter.UninitializedParameter)


def layer_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Return the shareable parameters of ``module`` by attribute name (``weight`` and, if any, ``bias``)."""
    found = {}
    for name in SHARED_PARAMETER_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, nn.Parameter):
            found[name] = value
    return found


def layer_signature(module: nn.Module, *, mode: MatchMode = "exact") -> LayerSignature:
    """Return the signature of a shareable ``module`` under matching ``mode``.

    Raises:
        TypeError: ``module`` is not a shareable layer.
        PlanError: ``mode`` is not ``exact`` or ``shape``.
    """
    check_match_mode(mode)
    kind = _shareable_kind(module)
    if kind is None or not is_shareable(module):
        raise TypeError(f"{type(module).__name__} is not a shareable layer")
    params = layer_parameters(module)
    hyperparameters: tuple[tuple[str, Any], ...] = ()
    if mode == "exact" and isinstance(module, _ConvNd):
        names = _CONV_HYPERPARAMETERS if module.transposed else _CONV_HYPERPARAMETERS[:-1]
        hyperparameters = tuple((name, getattr(module, name)) for name in names)
    return LayerSignature(
        kind=kind,
        shapes=tuple(tuple(params[name].shape) for name in SHARED_PARAMETER_NAMES if name in params),
        dtype=str(params["weight"].dtype).removeprefix("torch."),
        groups=getattr(module, "groups", 1),
        hyperparameters=hyperparameters,
    )


def iter_shareable_layers(model: nn.Module, *, mode: MatchMode = "exact") -> Iterator[ShareableLayer]:
    """Yield every shareable layer of ``model`` in module order (a module reachable twice is yielded once).

    Raises:
        PlanError: ``mode`` is not ``exact`` or ``shape``.
    """
    check_match_mode(mode)
    for path, module in model.named_modules():
        if is_shareable(module):
            yield ShareableLayer(
                path=path,
                module=module,
                signature=layer_signature(module, mode=mode),
                param_bytes=sum(tensor_bytes(p) for p in layer_parameters(module).values()),
            )


@dataclass(frozen=True)
class InstanceCandidate:
    """A merge instance found by analysis, with what it saves."""

    signature: LayerSignature
    members: tuple[LayerRef, ...]
    # Bytes of one copy of the shared parameters.
    layer_bytes: int
    # Position of the first member among its model's shareable layers (module order; 0 is nearest the input).
    order: int = 0

    @property
    def savings_bytes(self) -> int:
        """Return the bytes saved by keeping one copy for all members: ``layer_bytes × (members − 1)``."""
        return self.layer_bytes * (len(self.members) - 1)

    def to_instance(self) -> MergeInstance:
        """Return this candidate as a plan instance."""
        return MergeInstance(self.members, self.signature.key)


def _layers_by_signature(
    models: Mapping[str, nn.Module], mode: MatchMode
) -> dict[LayerSignature, dict[str, list[ShareableLayer]]]:
    grouped: dict[LayerSignature, dict[str, list[ShareableLayer]]] = defaultdict(lambda: defaultdict(list))
    for name, model in models.items():
        for layer in iter_shareable_layers(model, mode=mode):
            grouped[layer.signature][name].append(layer)
    return grouped


def _module_order(models: Mapping[str, nn.Module], mode: MatchMode) -> dict[tuple[str, str], int]:
    return {
        (name, layer.path): position
        for name, model in models.items()
        for position, layer in enumerate(iter_shareable_layers(model, mode=mode))
    }


def find_instances(models: Mapping[str, nn.Module], *, mode: MatchMode = "exact") -> list[InstanceCandidate]:
    """Return every merge instance across ``models``, largest savings first.

    For each signature, the i-th layer of that signature in each model (in module order) joins the
    i-th instance, so an instance never holds two layers of one model and early layers pair with early
    layers. Instances with a single member save nothing and are left out.

    Raises:
        PlanError: ``mode`` is not ``exact`` or ``shape``.
    """
    candidates = []
    order = _module_order(models, mode)
    for signature, per_model in _layers_by_signature(models, mode).items():
        depth = max(len(layers) for layers in per_model.values())
        for position in range(depth):
            members = tuple(
                LayerRef(name, layers[position].path)
                for name, layers in per_model.items()
                if position < len(layers)
            )
            if len(members) > 1:
                layer_bytes = next(iter(per_model.values()))[0].param_bytes
                first = members[0]
                candidates.append(InstanceCandidate(signature, members, layer_bytes, order[(first.model, first.layer)]))
    candidates.sort(key=lambda c: (-c.savings_bytes, c.signature.key, c.members))
    return candidates


def structural_optimum(models: Mapping[str, nn.Module], *, mode: MatchMode = "exact") -> int:
    """Return the bytes saved if every shareable layer were shared.

    Σ over signatures s of bytes(s) × (Σ_models count_m(s) − max_models count_m(s)).

    Raises:
        PlanError: ``mode`` is not ``exact`` or ``shape``.
    """
    total = 0
    for per_model in _layers_by_signature(models, mode).values():
        counts = [len(layers) for layers in per_model.values()]
        layer_bytes = next(iter(per_model.values()))[0].param_bytes
        total += layer_bytes * (sum(counts) - max(counts))
    return total


@dataclass(frozen=True)
class ModelSummary:
    """One model of an analysed workload."""

    name: str
    arch: str | None
    param_bytes: int
    shareable_param_bytes: int


@dataclass(frozen=True)
class LayerAnalysis:
    """Sharing potential of a set of models."""

    mode: MatchMode
    models: tuple[ModelSummary, ...]
    instances: tuple[InstanceCandidate, ...]

    @property
    def total_param_bytes(self) -> int:
        """Return the parameter bytes of all models held separately."""
        return sum(model.param_bytes for model in self.models)

    @property
    def max_savings_bytes(self) -> int:
        """Return the structural optimum: bytes saved if every instance were shared."""
        return sum(instance.savings_bytes for instance in self.instances)

    @property
    def max_savings_fraction(self) -> float:
        """Return the structural optimum as a fraction of the total parameter bytes (0 for no models)."""
        return self.max_savings_bytes / self.total_param_bytes if self.total_param_bytes else 0.0

    def plan(self) -> MergePlan:
        """Return the plan that shares every instance (the structural optimum)."""
        return MergePlan(tuple(c.to_instance() for c in self.instances), self.mode, {"strategy": "all"})

    def to_dict(self) -> dict[str, Any]:
        """Return the analysis as JSON-ready data."""
        return {
            "mode": self.mode,
            "models": [
                {
                    "name": m.name,
                    "arch": m.arch,
                    "param_bytes": m.param_bytes,
                    "shareable_param_bytes": m.shareable_param_bytes,
                }
                for m in self.models
            ],
            "total_param_bytes": self.total_param_bytes,
            "instances": [
                {
                    "signature": c.signature.key,
                    "members": [{"model": m.model, "layer": m.layer} for m in c.members],
                    "bytes": c.layer_bytes,
                    "savings_bytes": c.savings_bytes,
                }
                for c in self.instances
            ],
            "max_savings_bytes": self.max_savings_bytes,
            "max_savings_fraction": self.max_savings_fraction,
        }


def analyze_models(
    models: Mapping[str, nn.Module], *, mode: MatchMode = "exact", archs: Mapping[str, str] | None = None
) -> LayerAnalysis:
    """Return the sharing analysis of ``models`` (name → module) under matching ``mode``.

    Raises:
        PlanError: ``mode`` is invalid or a model name breaks the naming rules.
    """
    instances = find_instances(models, mode=mode)
    summaries = tuple(
        ModelSummary(
            name=name,
            arch=(archs or {}).get(name),
            param_bytes=model_param_bytes(model),
            shareable_param_bytes=sum(layer.param_bytes for layer in iter_shareable_layers(model, mode=mode)),
        )
        for name, model in models.items()
    )
    return LayerAnalysis(mode, summaries, tuple(instances))
