"""Small factories for the workloads tests (rows straight through the ORM; no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from gemel_engine import zoo
from webapp.workloads.models import Camera, ModelEntry, Query

# The smallest classifier of the zoo: a few MB of weights, built in a fraction of a second.
TINY_ARCH = "mobilenet_v3_small"
PRESENCE = {"kind": "presence", "classes": ["car", "bus", "truck"]}


def measured(accuracy: float, *, frames: int = 100, half_width: float = 0.05) -> dict[str, Any]:
    """Return an accuracy as the engine's Measurement JSON (a 95% interval around it, within [0, 1])."""
    low, high = max(0.0, accuracy - half_width), min(1.0, accuracy + half_width)
    return {"accuracy": accuracy, "interval": [min(low, accuracy), max(high, accuracy)], "frames": frames}


def synthetic_source(name: str = "north", *, frames: int = 60, seed: int = 1) -> str:
    """Return a short synthetic camera URI."""
    return f"synthetic://{name}?seed={seed}&width=64&height=48&fps=5&frames={frames}&time_scale=20&start_hour=9"


def make_camera(name: str = "north", **fields: Any) -> Camera:
    """Return a saved camera on a short synthetic source, 32×32 frames."""
    fields.setdefault("source", synthetic_source(name if name.isidentifier() else "cam"))
    fields.setdefault("width", 32)
    fields.setdefault("height", 32)
    fields.setdefault("fps", 5.0)
    fields.setdefault("sampling", {"val_fraction": 0.5, "gap_seconds": 0.0})
    return Camera.objects.create(name=name, **fields)


def write_weights(path: Path, *, arch: str = TINY_ARCH, num_classes: int = 2, seed: int = 0) -> Path:
    """Write freshly initialised weights of ``arch`` to ``path`` (safetensors) and return it."""
    import torch

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return zoo.save_weights(zoo.get_model(arch, num_classes=num_classes), path)


def make_model(name: str = "mnv3", *, arch: str = TINY_ARCH, num_classes: int = 2) -> ModelEntry:
    """Return a saved model whose weights file exists under MEDIA_ROOT."""
    relative = f"weights/{abs(hash(name))}.safetensors"
    path = write_weights(Path(settings.MEDIA_ROOT) / relative, arch=arch, num_classes=num_classes)
    return ModelEntry.objects.create(
        name=name, arch=arch, builder_args={"num_classes": num_classes}, weights=relative,
        weights_size=path.stat().st_size,
    )


def make_query(
    name: str = "north_vehicles", *, camera: Camera | None = None, model: ModelEntry | None = None, **fields: Any
) -> Query:
    """Return a saved query, ready (measured) unless ``status`` says otherwise."""
    fields.setdefault("task", PRESENCE)
    fields.setdefault("status", Query.Status.READY)
    if fields["status"] == Query.Status.READY:
        fields.setdefault("unmerged_accuracy", 0.9)
        fields.setdefault("chance_accuracy", 0.6)
        fields.setdefault("unmerged_test", measured(fields["unmerged_accuracy"]))
    return Query.objects.create(
        name=name, camera=camera or make_camera(), model=model or make_model(), **fields
    )
