from __future__ import annotations

from pathlib import Path

import pytest

from gemel_engine.bundle import load_bundle
from gemel_engine.queries import Task
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.executor import Executor
from gemel_engine.runtime.profile import profile_recipe
from gemel_engine.runtime.scheduler import RuntimeQuery, get_scheduler
from gemel_engine.runtime.simulator import predict_stream, simulate
from gemel_engine.runtime.stream import serve_offline
from gemel_engine.runtime.swap import BandwidthModel
from gemel_engine.train import torch_threads
from tests.engine.runtime.conftest import make_bundle
from tests.engine.runtime.test_executor import _frames

PRESENCE = Task("presence", ("car", "bus", "truck"))
# Slow enough a link that swapping, not compute noise, decides what is dropped.
LINK = BandwidthModel(4e8)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    bundle = make_bundle(
        tmp_path_factory.mktemp("agree") / "bundle", {"a": "resnet18", "b": "resnet18", "c": "mobilenet_v2"}
    )
    loaded = load_bundle(bundle)
    cache = tmp_path_factory.mktemp("profiles")
    with torch_threads(1):  # profiled as the executor will run: one thread
        profiles = {
            name: profile_recipe(recipe, input_size=(32, 32), bandwidth=LINK, cache_dir=cache)
            for name, recipe in loaded.recipes.items()
        }
    queries = [
        RuntimeQuery("qa", "a", PRESENCE, "n", 0.3), RuntimeQuery("qb", "b", PRESENCE, "e", 0.3),
        RuntimeQuery("qc", "c", PRESENCE, "n", 0.3),
    ]
    frames = [*_frames("n", 60, 15.0), *_frames("e", 60, 15.0, seed=2)]
    return bundle, profiles, queries, frames


def test_profiles_are_cached_and_add_up_to_the_forward_pass(tiny_setup, tmp_path: Path):
    bundle, profiles, _, _ = tiny_setup
    recipe = load_bundle(bundle).recipes["c"]
    first = profile_recipe(recipe, input_size=(32, 32), bandwidth=LINK, cache_dir=tmp_path, repeats=2)
    again = profile_recipe(recipe, input_size=(32, 32), bandwidth=LINK, cache_dir=tmp_path, repeats=2)
    assert first == again and len(list(tmp_path.iterdir())) == 1
    assert first.load_simulated and first.compute_seconds(1) > 0 and first.compute_seconds(4) > 0
    low, high = sorted((first.compute_seconds(1), first.compute_seconds(4)))
    assert low <= first.compute_seconds(2) <= high  # linear between the measured batch sizes
    assert first.layers[0].path == "features.0.0"  # execution order: the stem first
    assert first.param_bytes == profiles["c"].param_bytes


def test_the_simulator_predicts_the_executors_drop_rate_within_15_points(tiny_setup):
    bundle, profiles, queries, frames = tiny_setup
    with torch_threads(1):  # a busy two-core machine times one thread far more steadily
        loaded = load_bundle(bundle)
        predictions = predict_stream(loaded.models.as_dict(), queries, frames)
        sizes = {name: p.param_bytes for name, p in profiles.items()}
        shared = loaded.models
        executor_probe = Executor(shared, budget=MemoryBudget(10**10), device="cpu")
        total, largest = executor_probe.total_bytes(), max(sizes.values())
        gaps = []
        for fraction in (0.0, 0.5, 1.0):
            budget = MemoryBudget(int(largest + (total - largest) * fraction) + 1_000_000, 1_000_000)
            executor = Executor(
                load_bundle(bundle).models, budget=budget, device="cpu", clock=VirtualClock(), bandwidth=LINK,
                profiles=profiles, keep_shared=True,
            )
            executor.warm_up(frames[0].image, {q.model: q.task for q in queries})
            real = serve_offline(executor, queries, frames, get_scheduler("merged"))
            predicted = simulate(
                recipes=loaded.recipes, plan=loaded.plan, profiles=profiles, predictions=predictions,
                queries=queries, frames=frames, budget=budget, scheduler="merged", bandwidth=LINK,
            )
            assert predicted["predicted"] and real["simulated"]
            gaps.append(abs(real["drop_rate"] - predicted["drop_rate"]))
    assert max(gaps) <= 0.15, gaps
