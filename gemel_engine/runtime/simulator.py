"""What-if simulator: predicted drops and effective accuracy for any memory budget, in seconds.

It replays the same stream through the same scheduler loop, eviction policy and budget accounting as the
real executor, but runs no forward pass: each batch costs what the layer profiles say (compute per layer
and batch size, overlapped with the bandwidth model's transfers of what is missing) and returns the
model's prediction for each frame, computed once beforehand (``predict_stream``). Models are built on
the meta device (shapes only), so the simulator needs no weights in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gemel_engine.bundle import ModelRecipe
from gemel_engine.errors import RuntimeConfigError
from gemel_engine.plan import MergePlan
from gemel_engine.queries import Target, Task, predict
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.executor import Executor
from gemel_engine.runtime.profile import ModelProfile
from gemel_engine.runtime.scheduler import CameraFrame, RuntimeQuery, get_scheduler, stack_images
from gemel_engine.runtime.stream import serve_offline
from gemel_engine.runtime.swap import BandwidthModel, EvictionPolicy
from gemel_engine.sharing import apply_plan

Predictions = Mapping[str, Mapping[tuple[str, int], Target]]


def predict_stream(
    models: Mapping[str, nn.Module],
    queries: Sequence[RuntimeQuery],
    frames: Sequence[CameraFrame],
    *,
    batch_size: int = 32,
) -> dict[str, dict[tuple[str, int], Target]]:
    """Return, per model, its prediction for every frame of the cameras its queries watch.

    Returns:
        model name → (camera, frame index) → prediction.
    """
    out: dict[str, dict[tuple[str, int], Target]] = {}
    for query in queries:
        seen = out.setdefault(query.model, {})
        todo = [f for f in frames if f.camera == query.camera and (f.camera, f.index) not in seen]
        if todo:
            results = predict(models[query.model], stack_images(todo), query.task, batch_size=batch_size)
            seen.update({(f.camera, f.index): r for f, r in zip(todo, results, strict=True)})
    return out


class SimulatedExecutor(Executor):
    """An executor over meta models that charges profiled times and answers from precomputed predictions."""

    def __init__(
        self, models: Mapping[str, nn.Module], predictions: Predictions, *, overlap: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(models, device="cpu", timing="profiled", **kwargs)
        self.predictions = predictions
        self.swap.mover.overlaps_compute = overlap

    def run(self, name: str, frames: Sequence[Any], task: Task) -> list[Target]:
        """Return the precomputed predictions for ``frames`` after charging the profiled time of the batch."""
        plan, transfer = self._swap_in(name)
        compute = self.profiles[name].layer_seconds(max(1, len(frames)))
        self.clock.account(self._pipelined(name, plan, transfer, compute))
        return [self.predictions[name][(frame.camera, frame.index)] for frame in frames]


def meta_models(recipes: Mapping[str, ModelRecipe], plan: MergePlan | None = None) -> dict[str, nn.Module]:
    """Return the recipes' models on the meta device (no memory), tied by ``plan`` when given."""
    models = {name: recipe.build(device="meta") for name, recipe in recipes.items()}
    if plan is not None and plan.instances:
        apply_plan(models, plan)
    return models


def simulate(
    *,
    recipes: Mapping[str, ModelRecipe],
    plan: MergePlan | None,
    profiles: Mapping[str, ModelProfile],
    predictions: Predictions,
    queries: Sequence[RuntimeQuery],
    frames: Sequence[CameraFrame],
    budget: MemoryBudget,
    scheduler: str,
    policy: EvictionPolicy | str = "lru",
    bandwidth: BandwidthModel | None = None,
    overlap: bool = True,
) -> dict[str, Any]:
    """Predict a run of ``frames`` under ``budget``: the report ``serve_offline`` gives, marked ``predicted``.

    ``plan`` ties the models (a bundle's plan) or is None for unmerged models. ``bandwidth`` is the transfer
    model of the tier predicted (for the disk tier, the one fitted to its measured reads by
    ``calibrate_disk_tier``); ``overlap`` says whether loads run beside compute (CUDA) or before it (disk).

    Raises:
        RuntimeBudgetError: the models do not fit the budget under the scheduler.
        RuntimeConfigError: a model lacks a profile or predictions, or the scheduler is unknown.
    """
    missing = sorted(set(recipes) - set(profiles))
    if missing:
        raise RuntimeConfigError(f"no layer profile for models {missing}")
    chosen = get_scheduler(scheduler)
    executor = SimulatedExecutor(
        meta_models(recipes, plan), predictions, budget=budget, clock=VirtualClock(), policy=policy,
        keep_shared=chosen.keep_shared, bandwidth=bandwidth, profiles=profiles, overlap=overlap,
    )
    with torch.no_grad():
        report = serve_offline(executor, queries, frames, chosen)
    return {**report, "predicted": True}
