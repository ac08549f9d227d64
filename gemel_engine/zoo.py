"""Registry of the architectures Gemel can build, and safe loading of their weights.

Every builder wraps a torchvision constructor with ``weights=None`` (and ``weights_backbone=None`` for
detectors): nothing is ever downloaded. Weights come from the operator's own files, read from safetensors
or from ``.pt``/``.pth`` through ``torch.load(weights_only=True)`` only, and are checked against the
architecture before they touch the model.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision.models as tvm
import torchvision.models.detection as tvd
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from gemel_engine.errors import UnknownArchitectureError, WeightsError
from gemel_engine.registry import Registry

# What a model outputs: class logits or detections (not the queries module's Task, which is what a query asks).
ModelKind = Literal["classification", "detection"]
Builder = Callable[..., nn.Module]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_MAX_LISTED_KEYS = 8
# Largest pickle a .pt zip may hold: a state dict's names and tensor records, not its data (a ResNet-101's
# is under 100 KB); more is a decompression bomb or not a state dict.
MAX_PICKLE_BYTES = 16 << 20
# A safetensors file starts with its JSON header's length as an unsigned 64-bit little-endian integer.
_SAFETENSORS_LENGTH_BYTES = 8


@dataclass(frozen=True)
class ArchSpec:
    """What the zoo knows about one architecture."""

    name: str
    # The torchvision family the architecture belongs to (resnet, vgg, ...): groups models in reports.
    family: str
    # "classification" models return logits; "detection" models return boxes, labels and scores.
    task: ModelKind
    # The keyword-only builder; it must accept ``num_classes``.
    builder: Builder = field(repr=False)
    # Smallest square input (pixels) the architecture accepts.
    min_input_size: int = 32
    # Class count used when the caller does not give one.
    default_num_classes: int = 1000


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture", error=UnknownArchitectureError)


def register_model(
    name: str, *, family: str, task: ModelKind, min_input_size: int = 32, default_num_classes: int = 1000
) -> Callable[[Builder], Builder]:
    """Return a decorator that registers a builder under ``name``.

    Raises:
        RegistryError: ``name`` is already registered (registries never overwrite silently).
    """

    def decorate(builder: Builder) -> Builder:
        ARCHITECTURES.register(ArchSpec(name, family, task, builder, min_input_size, default_num_classes))
        return builder

    return decorate


def get_spec(name: str) -> ArchSpec:
    """Return the registry entry of architecture ``name``.

    Raises:
        UnknownArchitectureError: ``name`` is not registered; the message lists the known names.
    """
    return ARCHITECTURES.get(name)


def list_models(*, task: ModelKind | None = None, family: str | None = None) -> list[str]:
    """Return the sorted names of registered architectures, optionally filtered by task or family."""
    return sorted(
        spec.name
        for spec in ARCHITECTURES
        if (task is None or spec.task == task) and (family is None or spec.family == family)
    )


def get_model(
    name: str, *, num_classes: int | None = None, device: torch.device | str | None = None, **kwargs: Any
) -> nn.Module:
    """Build architecture ``name`` with freshly initialised weights (never downloaded).

    ``device="meta"`` builds it without allocating memory, which is all that shape analysis needs.

    Returns:
        The model in eval mode.

    Raises:
        UnknownArchitectureError: ``name`` is not registered.
        ValueError: ``num_classes`` is not a positive integer.
    """
    spec = get_spec(name)
    classes = spec.default_num_classes if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {classes!r}")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = spec.builder(num_classes=classes, **kwargs)
    return model.eval()


def _classifier(name: str, family: str, factory: Builder, *, min_input_size: int = 32, **fixed: Any) -> None:
    def build(*, num_classes: int, **kwargs: Any) -> nn.Module:
        return factory(weights=None, num_classes=num_classes, **{**fixed, **kwargs})

    build.__name__ = f"build_{name}"
    build.__doc__ = f"Return an untrained torchvision {name} with ``num_classes`` outputs."
    register_model(name, family=family, task="classification", min_input_size=min_input_size)(build)


# Largest anchor_scale: anchors 16 times torchvision's biggest (512 px) already outgrow any frame; beyond it
# sizes only grow towards overflow (1e308 cannot be rounded to an integer).
MAX_ANCHOR_SCALE = 16.0


def scale_anchors(model: nn.Module, scale: float) -> nn.Module:
    """Multiply the anchor sizes of a Faster R-CNN or RetinaNet by ``scale`` (for small objects).

    The number of anchors per location is unchanged, so the heads and their weights keep their shapes.

    Returns:
        ``model``, with a new anchor generator.

    Raises:
        ValueError: ``scale`` is not a number in (0, MAX_ANCHOR_SCALE], or the model has no anchor generator
            to scale.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= MAX_ANCHOR_SCALE:
        raise ValueError(f"anchor_scale must be a number in (0, {MAX_ANCHOR_SCALE:g}], got {scale!r}")
    owner = getattr(model, "rpn", model)
    generator = getattr(owner, "anchor_generator", None)
    if not isinstance(generator, AnchorGenerator):
        raise ValueError(f"{type(model).__name__} has no anchor generator to scale")
    sizes = tuple(tuple(max(1, round(size * scale)) for size in level) for level in generator.sizes)
    owner.anchor_generator = AnchorGenerator(sizes, generator.aspect_ratios)
    return model


def _detector(name: str, family: str, factory: Builder, *, min_input_size: int = 64) -> None:
    def build(*, num_classes: int, anchor_scale: float = 1.0, **kwargs: Any) -> nn.Module:
        model = factory(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        return model if anchor_scale == 1.0 else scale_anchors(model, anchor_scale)

    build.__name__ = f"build_{name}"
    build.__doc__ = (
        f"Return an untrained torchvision {name}; ``num_classes`` counts the background class and "
        "``anchor_scale`` resizes the anchors (Faster R-CNN, RetinaNet)."
    )
    register_model(name, family=family, task="detection", min_input_size=min_input_size, default_num_classes=91)(
        build
    )


def _fasterrcnn_on_resnet(depth: int) -> Builder:
    def build(*, weights: None, weights_backbone: None, num_classes: int, **kwargs: Any) -> nn.Module:
        # Untrained backbones get trainable BatchNorm, as torchvision gives its own untrained detectors.
        backbone = resnet_fpn_backbone(
            backbone_name=f"resnet{depth}", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
        return tvd.FasterRCNN(backbone, num_classes=num_classes, **kwargs)

    return build


for _depth in (18, 34, 50, 101, 152):
    _classifier(f"resnet{_depth}", "resnet", getattr(tvm, f"resnet{_depth}"))
for _depth in (11, 13, 16, 19):
    _classifier(f"vgg{_depth}", "vgg", getattr(tvm, f"vgg{_depth}"))
    _classifier(f"vgg{_depth}_bn", "vgg", getattr(tvm, f"vgg{_depth}_bn"))
_classifier("mobilenet_v2", "mobilenet", tvm.mobilenet_v2)
_classifier("mobilenet_v3_small", "mobilenet", tvm.mobilenet_v3_small)
_classifier("mobilenet_v3_large", "mobilenet", tvm.mobilenet_v3_large)
_classifier("efficientnet_b0", "efficientnet", tvm.efficientnet_b0)
_classifier("densenet121", "densenet", tvm.densenet121)
_classifier("inception_v3", "inception", tvm.inception_v3, min_input_size=75, aux_logits=False, init_weights=True)
_detector("fasterrcnn_resnet50_fpn", "fasterrcnn", tvd.fasterrcnn_resnet50_fpn)
# Faster R-CNNs on backbones light enough to train from scratch on a CPU, whose FPN starts at stride 4 and so
# sees the 5-10 pixel objects of small frames (the MobileNet-v3 one only has stride-16 and -32 features).
for _depth in (18, 34):
    _detector(f"fasterrcnn_resnet{_depth}_fpn", "fasterrcnn", _fasterrcnn_on_resnet(_depth))
_detector("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn", tvd.fasterrcnn_mobilenet_v3_large_320_fpn)
_detector("ssd300_vgg16", "ssd", tvd.ssd300_vgg16)
_detector("ssdlite320_mobilenet_v3_large", "ssd", tvd.ssdlite320_mobilenet_v3_large)
_detector("retinanet_resnet50_fpn", "retinanet", tvd.retinanet_resnet50_fpn)


def read_state_dict(path: str | Path, *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, or a ``.pt``/``.pth`` file without unpickling code.

    ``.pt``/``.pth`` files go through ``torch.load(weights_only=True)``, which refuses any pickle that
    would build objects other than tensors and plain containers; a ``{"state_dict": {...}}`` wrapper
    is unwrapped.

    Returns:
        Tensor name → tensor, on the CPU.

    Raises:
        WeightsError: the file is missing, too large, of an unknown kind, corrupt, unsafe, or holds
            something other than a flat mapping of names to tensors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        kinds = ", ".join(WEIGHT_SUFFIXES)
        raise WeightsError(f"{path}: weights must be one of {kinds}, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise WeightsError(f"{path}: weights file is {size} bytes, over the limit of {max_bytes}")
    if suffix == ".safetensors":
        _check_safetensors_start(path, size=size)
    else:
        _check_unpacked_size(path, max_bytes=max_bytes)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader failure is the file's fault: corrupt, truncated or unsafe
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot read weights safely ({type(exc).__name__}: {reason})") from exc
    if isinstance(loaded, Mapping) and set(loaded) == {"state_dict"}:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise WeightsError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(loaded)


def _check_safetensors_start(path: Path, *, size: int) -> None:
    """Refuse a ``.safetensors`` file that does not start like one: an 8-byte little-endian header length that fits
    in the file, then a JSON object. A text file or another format renamed ``.safetensors`` is then called what it
    is, not a "header too large" from the reader."""
    with path.open("rb") as handle:
        start = handle.read(_SAFETENSORS_LENGTH_BYTES + 1)
    length = int.from_bytes(start[:_SAFETENSORS_LENGTH_BYTES], "little")
    if (len(start) <= _SAFETENSORS_LENGTH_BYTES or start[-1:] != b"{"
            or not 2 <= length <= size - _SAFETENSORS_LENGTH_BYTES):
        raise WeightsError(f"{path}: not a safetensors file (it does not start with a safetensors header); "
                           "save the state dict with safetensors' save_file, or upload a .pt/.pth file")


def _check_unpacked_size(path: Path, *, max_bytes: int | None) -> None:
    """Refuse a ``.pt`` zip whose members unpack past ``max_bytes`` or whose pickle is implausibly large, from
    the zip directory alone: before any byte is decompressed or unpickled."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format is one pickle: bounded by the file size already checked
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{path}: cannot read weights safely (corrupt archive: {exc})") from None
    unpacked = sum(member.file_size for member in members)
    if max_bytes is not None and unpacked > max_bytes:
        raise WeightsError(f"{path}: weights unpack to {unpacked} bytes, over the limit of {max_bytes}")
    pickles = [m for m in members if m.filename.endswith(".pkl") and m.file_size > MAX_PICKLE_BYTES]
    if pickles:
        raise WeightsError(f"{path}: its pickle {pickles[0].filename} unpacks to {pickles[0].file_size} bytes; a "
                           f"state dict's is far below {MAX_PICKLE_BYTES}")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "weights") -> None:
    """Check that ``state`` has exactly the keys and shapes of ``model``'s state dict, floating point where the
    model's tensors are, and finite.

    Raises:
        WeightsError: one error that lists the missing, unexpected and mis-shaped keys.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(state)
        if state[key].shape != expected[key].shape
    )
    shared = sorted(set(expected) & set(state))
    not_float = sorted(
        f"{key} ({state[key].dtype})" for key in shared
        if expected[key].is_floating_point() and not state[key].is_floating_point()
    )
    not_finite = sorted(
        key for key in shared
        if state[key].is_floating_point() and state[key].shape == expected[key].shape
        and not bool(torch.isfinite(state[key]).all())
    )
    problems = [
        f"{label} ({len(keys)}): {_abbreviate(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                            ("not floating point", not_float), ("not finite (NaN or inf)", not_finite))
        if keys
    ]
    if problems:
        raise WeightsError(f"{source} do not fit the architecture: " + "; ".join(problems))


def _abbreviate(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    return shown if len(items) <= _MAX_LISTED_KEYS else f"{shown}, ... ({len(items) - _MAX_LISTED_KEYS} more)"


def load_weights(model: nn.Module, path: str | Path, *, max_bytes: int | None = None) -> nn.Module:
    """Load the weights in ``path`` into ``model`` after checking every key and shape.

    Returns:
        ``model`` itself, with the weights copied in.

    Raises:
        WeightsError: the file cannot be read safely or does not fit the architecture.
    """
    state = read_state_dict(path, max_bytes=max_bytes)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state)
    return model


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict to a safetensors file (tensors made contiguous, on the CPU).

    Returns:
        The path written.

    Raises:
        WeightsError: ``path`` does not end in ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: unmerged weights are saved as .safetensors")
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    save_file(state, str(path))
    return path
