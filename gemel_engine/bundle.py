"""Merged bundles on disk: every tensor stored once, plus a manifest that says how to rebuild the models.

A bundle is a directory::

    manifest.json          format, version, models (architecture, builder arguments, tensor map), plan,
                           sha256 and size of the tensor file, free-form metadata
    tensors.safetensors    each distinct tensor once; shared tensors under the name of their first holder

Loading checks the format and version, the checksum, the tensor header against every architecture,
and that the plan's members point at one stored tensor, then ties them again (storage identity).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemel_engine import zoo
from gemel_engine.errors import BundleError, GemelError, PlanError
from gemel_engine.fileio import file_sha256, read_versioned_json
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import MergePlan, check_model_name
from gemel_engine.sharing import apply_plan, verify_sharing

BUNDLE_FORMAT = "gemel-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
TENSORS_NAME = "tensors.safetensors"


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild one model of a bundle: its architecture and builder arguments."""

    # Registered zoo architecture.
    arch: str
    # Keyword arguments of the zoo builder (``num_classes``...); JSON-serialisable.
    builder_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        zoo.get_spec(self.arch)
        object.__setattr__(self, "builder_args", dict(self.builder_args))

    def build(self, *, device: torch.device | str | None = None) -> nn.Module:
        """Return a freshly initialised model of this recipe.

        Raises:
            UnknownArchitectureError: the architecture is not registered.
            ValueError, TypeError: the builder rejects the arguments.
        """
        return zoo.get_model(self.arch, device=device, **self.builder_args)


def _tensor_identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (
        str(tensor.device),
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def _collect_tensors(
    models: Mapping[str, nn.Module],
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, dict[str, str]]]]:
    stored: dict[str, torch.Tensor] = {}
    by_identity: dict[tuple[Any, ...], str] = {}
    tensor_maps: dict[str, dict[str, dict[str, str]]] = {}
    for model_name, model in models.items():
        parameter_keys = {key for key, _ in model.named_parameters(remove_duplicate=False)}
        maps: dict[str, dict[str, str]] = {"parameters": {}, "buffers": {}}
        for key, tensor in model.state_dict(keep_vars=False).items():
            identity = _tensor_identity(tensor)
            stored_name = by_identity.get(identity)
            if stored_name is None:
                stored_name = f"{model_name}/{key}"
                by_identity[identity] = stored_name
                stored[stored_name] = tensor.detach().to("cpu").contiguous().clone()
            maps["parameters" if key in parameter_keys else "buffers"][key] = stored_name
        tensor_maps[model_name] = maps
    return stored, tensor_maps


def save_bundle(
    models: Mapping[str, nn.Module] | ModelSet,
    plan: MergePlan,
    out_dir: str | Path,
    *,
    recipes: Mapping[str, ModelRecipe],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``models`` (with ``plan`` applied) as a bundle directory at ``out_dir``.

    The directory is written beside its destination and renamed into place, so a reader never sees a
    half-written bundle.

    Returns:
        The bundle directory.

    Raises:
        BundleError: ``out_dir`` exists (without ``overwrite``), a model lacks a recipe, the plan's
            members do not share storage, or ``metadata`` is not JSON-serialisable.
    """
    lookup = models.as_dict() if isinstance(models, ModelSet) else dict(models)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir}: bundle directory already exists")
    missing = sorted(set(lookup) - set(recipes))
    if missing:
        raise BundleError(f"no recipe (architecture) given for models {missing}")
    try:
        verify_sharing(lookup, plan)
    except GemelError as exc:
        raise BundleError(f"the plan is not applied to these models: {exc}") from exc
    stored, tensor_maps = _collect_tensors(lookup)

    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tensors_path = staging / TENSORS_NAME
        save_file(stored, str(tensors_path), metadata={"format": BUNDLE_FORMAT})
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tensor_file": TENSORS_NAME,
            "tensor_sha256": file_sha256(tensors_path),
            "tensor_file_bytes": tensors_path.stat().st_size,
            "models": [
                {
                    "name": name,
                    "arch": recipes[name].arch,
                    "builder_args": dict(recipes[name].builder_args),
                    "parameters": tensor_maps[name]["parameters"],
                    "buffers": tensor_maps[name]["buffers"],
                }
                for name in lookup
            ],
            "plan": plan.to_dict(),
            "metadata": dict(metadata or {}),
        }
        try:
            text = json.dumps(manifest, indent=2)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"bundle metadata must be JSON-serialisable: {exc}") from None
        (staging / MANIFEST_NAME).write_text(text + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Return the validated manifest of the bundle at ``bundle_dir``.

    Raises:
        BundleError: the manifest is missing, not JSON, of another format or an unsupported version,
            or lacks required fields.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST_NAME})")
    # Manifests written before the engine's one version key say "format_version": read_versioned_json accepts it.
    manifest = read_versioned_json(path, version=BUNDLE_VERSION, what="bundle", error=BundleError)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    _check_manifest_fields(manifest, path)
    return manifest


def _check_manifest_fields(manifest: dict[str, Any], path: Path) -> None:
    if manifest.get("tensor_file") != TENSORS_NAME or not isinstance(manifest.get("tensor_sha256"), str):
        raise BundleError(f"{path}: manifest must name {TENSORS_NAME} and its sha256")
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise BundleError(f"{path}: manifest lists no models")
    for entry in models:
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: each model entry must be an object")
        required = (("name", str), ("arch", str), ("builder_args", dict), ("parameters", dict), ("buffers", dict))
        for key, kind in required:
            if not isinstance(entry.get(key), kind):
                raise BundleError(f"{path}: model entry {entry.get('name')!r} lacks a valid {key!r}")
        try:
            check_model_name(entry["name"])
        except PlanError as exc:
            raise BundleError(f"{path}: {exc}") from None


def _plan_of(manifest: dict[str, Any], where: Path) -> MergePlan:
    try:
        return MergePlan.from_dict(manifest.get("plan"))
    except PlanError as exc:
        raise BundleError(f"{where}: invalid plan in manifest: {exc}") from None


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle rebuilt in memory, with its sharing in place."""

    models: ModelSet
    plan: MergePlan
    manifest: Mapping[str, Any]
    recipes: Mapping[str, ModelRecipe]


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read every tensor into its own freshly allocated (aligned) memory, not views of the file buffer."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # any reader failure means the file is damaged
        raise BundleError(f"{path}: tensor file is unreadable ({type(exc).__name__}: {exc})") from None


def _check_members_share_storage(manifest: dict[str, Any], plan: MergePlan, where: Path) -> None:
    maps = {entry["name"]: entry["parameters"] for entry in manifest["models"]}
    for instance in plan.instances:
        for suffix in ("weight", "bias"):
            names = {maps.get(ref.model, {}).get(f"{ref.layer}.{suffix}") for ref in instance.members}
            if len(names) > 1:
                members = ", ".join(str(ref) for ref in instance.members)
                raise BundleError(
                    f"{where}: manifest stores {suffix} of {members} separately, though the plan shares it"
                )


def _rebuild(entry: dict[str, Any], tensors: Mapping[str, torch.Tensor], where: Path) -> tuple[nn.Module, ModelRecipe]:
    name = entry["name"]
    try:
        recipe = ModelRecipe(entry["arch"], entry["builder_args"])
        model = recipe.build(device="meta")
    except (GemelError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: cannot build model {name!r}: {exc}") from None
    tensor_map = {**entry["parameters"], **entry["buffers"]}
    unknown = sorted({stored for stored in tensor_map.values() if stored not in tensors})
    if unknown:
        raise BundleError(f"{where}: model {name!r} refers to tensors absent from the file: {unknown[:5]}")
    state = {key: tensors[stored] for key, stored in tensor_map.items()}
    expected = model.state_dict()
    try:
        zoo.check_state_dict(model, state, source=f"bundle tensors of model {name!r}")
    except GemelError as exc:
        raise BundleError(f"{where}: {exc}") from None
    wrong_dtype = sorted(key for key in expected if state[key].dtype != expected[key].dtype)
    if wrong_dtype:
        raise BundleError(f"{where}: model {name!r} has tensors of the wrong dtype: {wrong_dtype[:5]}")
    model.load_state_dict(state, assign=True)
    leftovers = [key for key, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        model = recipe.build(device="cpu")
        model.load_state_dict(state)
    return model.eval(), recipe


def load_bundle(
    bundle_dir: str | Path, *, device: torch.device | str = "cpu", verify_checksum: bool = True
) -> LoadedBundle:
    """Rebuild the models of the bundle at ``bundle_dir`` with their shared tensors tied again.

    Returns:
        The models (as a ``ModelSet`` on ``device``, eval mode), the plan, the manifest and recipes.

    Raises:
        BundleError: missing, corrupt, truncated or tampered files (checksum, header, shapes, dtypes,
            tensor map inconsistent with the plan), unknown architectures or format versions.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    plan = _plan_of(manifest, bundle_dir)
    tensors_path = bundle_dir / TENSORS_NAME
    if not tensors_path.is_file():
        raise BundleError(f"{bundle_dir}: tensor file {TENSORS_NAME} is missing")
    if verify_checksum and file_sha256(tensors_path) != manifest["tensor_sha256"]:
        raise BundleError(f"{tensors_path}: sha256 differs from the manifest (corrupted or tampered)")
    tensors = _load_tensors(tensors_path)
    _check_members_share_storage(manifest, plan, bundle_dir)
    models: dict[str, nn.Module] = {}
    recipes: dict[str, ModelRecipe] = {}
    for entry in manifest["models"]:
        models[entry["name"]], recipes[entry["name"]] = _rebuild(entry, tensors, bundle_dir)
    model_set = ModelSet(models)
    try:
        apply_plan(model_set, plan, warm_start="first")
        verify_sharing(model_set, plan)
    except GemelError as exc:
        raise BundleError(f"{bundle_dir}: plan does not fit the models: {exc}") from None
    model_set.to(device)
    return LoadedBundle(model_set, plan, manifest, recipes)


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle holds, read from its manifest and tensor header without loading the tensors."""

    path: Path
    models: tuple[dict[str, Any], ...]
    plan: MergePlan
    # Parameter bytes if every model kept its own copy.
    unmerged_param_bytes: int
    # Parameter bytes actually stored (each shared tensor once).
    unique_param_bytes: int
    # Bytes of all stored tensors (parameters and buffers).
    stored_tensor_bytes: int
    tensor_file_bytes: int
    metadata: Mapping[str, Any]

    @property
    def savings_bytes(self) -> int:
        """Return the parameter bytes sharing saves."""
        return self.unmerged_param_bytes - self.unique_param_bytes

    @property
    def savings_fraction(self) -> float:
        """Return the savings as a fraction of the unmerged parameter bytes."""
        return self.savings_bytes / self.unmerged_param_bytes if self.unmerged_param_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the information as JSON-ready data."""
        return {
            "path": str(self.path),
            "models": list(self.models),
            "instances": self.plan.to_dict()["instances"],
            "mode": self.plan.mode,
            "unmerged_param_bytes": self.unmerged_param_bytes,
            "unique_param_bytes": self.unique_param_bytes,
            "savings_bytes": self.savings_bytes,
            "savings_fraction": self.savings_fraction,
            "stored_tensor_bytes": self.stored_tensor_bytes,
            "tensor_file_bytes": self.tensor_file_bytes,
            "metadata": dict(self.metadata),
        }


# The files a bundle is made of, manifest first: what a server serves and an agent downloads.
BUNDLE_FILE_NAMES = (MANIFEST_NAME, TENSORS_NAME)


def bundle_file_digests(bundle_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return each file of the bundle at ``bundle_dir`` (``BUNDLE_FILE_NAMES``) with its ``sha256`` and
    ``size_bytes``: the tensor file's digest as its manifest records it (not read again), the manifest's own
    computed.

    Raises:
        BundleError: as ``read_manifest``, or the tensor file is missing.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    tensors = bundle_dir / TENSORS_NAME
    if not tensors.is_file():
        raise BundleError(f"{bundle_dir}: {TENSORS_NAME} is missing")
    manifest_path = bundle_dir / MANIFEST_NAME
    return {
        MANIFEST_NAME: {"sha256": file_sha256(manifest_path), "size_bytes": manifest_path.stat().st_size},
        TENSORS_NAME: {"sha256": manifest["tensor_sha256"], "size_bytes": tensors.stat().st_size},
    }


def bundle_model_names(bundle_dir: str | Path) -> list[str]:
    """Return the names of the models in the bundle at ``bundle_dir``, in manifest order.

    Raises:
        BundleError: as ``read_manifest``, or a model entry without a name.
    """
    manifest = read_manifest(bundle_dir)
    try:
        return [str(entry["name"]) for entry in manifest["models"]]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir}: manifest models are malformed ({exc})") from None


def inspect_bundle(bundle_dir: str | Path) -> BundleInfo:
    """Return what the bundle at ``bundle_dir`` holds; sizes come from the tensor file's own header.

    Raises:
        BundleError: the manifest or the tensor header is invalid, or the manifest names absent tensors.
    """
    from safetensors import safe_open

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    plan = _plan_of(manifest, bundle_dir)
    tensors_path = bundle_dir / TENSORS_NAME
    try:
        with safe_open(str(tensors_path), framework="pt", device="cpu") as handle:
            sizes = {}
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                sliced = handle.get_slice(key)
                itemsize = _SAFETENSORS_ITEMSIZE.get(sliced.get_dtype())
                if itemsize is None:
                    raise ValueError(f"tensor {key!r} has unsupported dtype {sliced.get_dtype()!r}")
                sizes[key] = math.prod(sliced.get_shape()) * itemsize
    except Exception as exc:  # any reader failure means the file is damaged
        raise BundleError(f"{tensors_path}: tensor header is unreadable ({type(exc).__name__}: {exc})") from None
    unmerged = 0
    unique: set[str] = set()
    models = []
    for entry in manifest["models"]:
        absent = sorted(set(entry["parameters"].values()) - set(sizes))
        if absent:
            raise BundleError(f"{bundle_dir}: model {entry['name']!r} refers to absent tensors {absent[:5]}")
        param_bytes = sum(sizes[stored] for stored in entry["parameters"].values())
        unmerged += param_bytes
        unique.update(entry["parameters"].values())
        models.append({"name": entry["name"], "arch": entry["arch"], "builder_args": entry["builder_args"],
                       "param_bytes": param_bytes})
    return BundleInfo(
        path=bundle_dir,
        models=tuple(models),
        plan=plan,
        unmerged_param_bytes=unmerged,
        unique_param_bytes=sum(sizes[name] for name in unique),
        stored_tensor_bytes=sum(sizes.values()),
        tensor_file_bytes=tensors_path.stat().st_size,
        metadata=manifest.get("metadata", {}),
    )


_SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
