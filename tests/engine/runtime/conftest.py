"""Tiny merged bundles for the runtime tests: two small zoo models sharing every layer they can."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gemel_engine import zoo
from gemel_engine.bundle import ModelRecipe, save_bundle
from gemel_engine.layers import analyze_models
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import MergePlan
from gemel_engine.sharing import apply_plan

VEHICLES = {"kind": "presence", "classes": ["car", "bus", "truck"]}


def make_bundle(out: Path, archs: dict[str, str], *, share: bool = True, seed: int = 0) -> Path:
    """Write a bundle of freshly initialised zoo models (2 classes each), merged as far as they can be."""
    torch.manual_seed(seed)
    models = ModelSet({name: zoo.get_model(arch, num_classes=2) for name, arch in archs.items()})
    plan = analyze_models(models.as_dict()).plan()
    if not share:
        plan = MergePlan(instances=(), mode=plan.mode)
    apply_plan(models, plan)
    recipes = {name: ModelRecipe(arch, {"num_classes": 2}) for name, arch in archs.items()}
    return save_bundle(models, plan, out, recipes=recipes)


def camera_json(name: str, *, seed: int = 1, fps: float = 10.0, size: int = 32) -> dict:
    """Return a protocol camera object for a synthetic camera."""
    return {
        "name": name, "source": f"synthetic://{name}?seed={seed}&width=64&height=48&frames=200",
        "fps": fps, "width": size, "height": size,
    }


def desired_json(deployment: int, models: list[str], *, budget: int | None = None, scheduler: str = "merged",
                 slo_ms: float = 500.0) -> dict:
    """Return a protocol ``desired`` object with one query per model, each on its own camera."""
    return {
        "deployment": deployment,
        "bundle": {"files": []},
        "budget_bytes": budget,
        "scheduler": scheduler,
        "queries": [
            {"name": f"q_{model}", "model": model, "task": VEHICLES, "camera": camera_json(f"cam{i}", seed=i + 1),
             "slo_ms": slo_ms}
            for i, model in enumerate(models)
        ],
    }


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """Two MobileNet-v3-small models with every shareable layer merged."""
    archs = {"a": "mobilenet_v3_small", "b": "mobilenet_v3_small"}
    return make_bundle(tmp_path_factory.mktemp("bundle") / "merged", archs)
