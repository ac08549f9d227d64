"""Merge plans: which layers of which models share one weight copy. Frozen values with a JSON round-trip."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gemel_engine.errors import PlanError
from gemel_engine.fileio import read_versioned_json

MatchMode = Literal["exact", "shape"]
MATCH_MODES: tuple[MatchMode, ...] = ("exact", "shape")
PLAN_FORMAT = "gemel-plan"
PLAN_VERSION = 1

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LAYER_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


def check_model_name(name: object) -> str:
    """Return ``name`` if it is a valid model name: 1 to 64 letters, digits, ``_`` or ``-``.

    Raises:
        PlanError: the name has other characters, is empty or too long.
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise PlanError(f"model name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def check_match_mode(mode: object) -> MatchMode:
    """Return ``mode`` if it is ``"exact"`` or ``"shape"``.

    Raises:
        PlanError: any other value.
    """
    if mode not in MATCH_MODES:
        raise PlanError(f"match mode must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class LayerRef:
    """One layer of one model, by the model's name and the layer's dotted module path."""

    # Name of the model in the workload (``check_model_name`` rules).
    model: str
    # Dotted path of the module inside the model, as ``named_modules`` gives it.
    layer: str

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if not isinstance(self.layer, str) or not _LAYER_PATH.match(self.layer):
            raise PlanError(f"layer path {self.layer!r} of model {self.model!r} is not a dotted module path")

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}"


@dataclass(frozen=True)
class MergeInstance:
    """A set of layers, at most one per model, that share one copy of their weights."""

    # The layers that share; at least two, from distinct models.
    members: tuple[LayerRef, ...]
    # Human-readable signature the members have in common (informational).
    signature: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if len(self.members) < 2:
            raise PlanError(f"an instance needs at least two members, got {[str(m) for m in self.members]}")
        seen: dict[str, LayerRef] = {}
        for member in self.members:
            if not isinstance(member, LayerRef):
                raise PlanError(f"instance members must be LayerRef, got {member!r}")
            if member.model in seen:
                raise PlanError(
                    f"an instance may hold one layer per model, but {seen[member.model]} and {member} "
                    f"are both in model {member.model!r}"
                )
            seen[member.model] = member

    @property
    def models(self) -> frozenset[str]:
        """Return the names of the models that take part."""
        return frozenset(member.model for member in self.members)


@dataclass(frozen=True)
class MergePlan:
    """The instances of a merge configuration; validated on creation, serialisable to JSON."""

    # The shared layers; no layer may appear in two instances.
    instances: tuple[MergeInstance, ...] = ()
    # How layers were matched: "exact" (every hyperparameter) or "shape" (weights' shapes and groups).
    mode: MatchMode = "exact"
    # Free-form provenance (strategy, search round...); JSON-serialisable values only.
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", tuple(self.instances))
        object.__setattr__(self, "meta", dict(self.meta))
        check_match_mode(self.mode)
        owner: dict[LayerRef, int] = {}
        for index, instance in enumerate(self.instances):
            if not isinstance(instance, MergeInstance):
                raise PlanError(f"plan instances must be MergeInstance, got {instance!r}")
            for member in instance.members:
                if member in owner:
                    raise PlanError(f"layer {member} appears in instances {owner[member]} and {index}")
                owner[member] = index
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"plan meta must be JSON-serialisable: {exc}") from None

    @property
    def models(self) -> frozenset[str]:
        """Return the names of every model that shares at least one layer."""
        return frozenset(model for instance in self.instances for model in instance.models)

    @property
    def layers(self) -> frozenset[LayerRef]:
        """Return every layer that takes part in some instance."""
        return frozenset(member for instance in self.instances for member in instance.members)

    def extended(self, instances: Iterable[MergeInstance]) -> MergePlan:
        """Return a new plan with ``instances`` appended.

        Raises:
            PlanError: a new instance reuses a layer the plan already shares.
        """
        return MergePlan(self.instances + tuple(instances), self.mode, self.meta)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as plain JSON-ready data."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "mode": self.mode,
            "meta": dict(self.meta),
            "instances": [
                {
                    "signature": instance.signature,
                    "members": [{"model": m.model, "layer": m.layer} for m in instance.members],
                }
                for instance in self.instances
            ],
        }

    @classmethod
    def from_dict(cls, data: object) -> MergePlan:
        """Return the plan described by ``data`` (as written by ``to_dict``).

        Raises:
            PlanError: wrong format or version, missing fields, or an invalid plan.
        """
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a merge plan: expected an object with format {PLAN_FORMAT!r}")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"unsupported plan version {data.get('version')!r}; this build reads {PLAN_VERSION}")
        raw_instances = data.get("instances")
        if not isinstance(raw_instances, list):
            raise PlanError("plan field 'instances' must be a list")
        instances = []
        for index, raw in enumerate(raw_instances):
            if not isinstance(raw, Mapping) or not isinstance(raw.get("members"), list):
                raise PlanError(f"plan instance {index} must be an object with a 'members' list")
            members = []
            for member in raw["members"]:
                if not isinstance(member, Mapping) or set(member) != {"model", "layer"}:
                    raise PlanError(f"plan instance {index}: each member must be {{'model': ..., 'layer': ...}}")
                members.append(LayerRef(member["model"], member["layer"]))
            signature = raw.get("signature", "")
            if not isinstance(signature, str):
                raise PlanError(f"plan instance {index}: 'signature' must be a string")
            instances.append(MergeInstance(tuple(members), signature))
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise PlanError("plan field 'meta' must be an object")
        return cls(tuple(instances), data.get("mode", "exact"), meta)

    def to_json(self, *, indent: int | None = 2) -> str:
        """Return the plan as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> MergePlan:
        """Return the plan in the JSON document ``text``.

        Raises:
            PlanError: the text is not JSON or not a valid plan.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"merge plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON to ``path`` and return the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> MergePlan:
        """Return the plan stored at ``path``.

        Raises:
            PlanError: the file is missing, unreadable or not a valid plan.
        """
        return cls.from_dict(read_versioned_json(Path(path), version=PLAN_VERSION, what="merge plan", error=PlanError))
