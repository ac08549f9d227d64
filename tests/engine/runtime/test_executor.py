from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, start_http_server

from gemel_engine.bundle import load_bundle
from gemel_engine.data.sampling import resize_frame
from gemel_engine.data.sources import open_source
from gemel_engine.errors import RegistryError, RuntimeBudgetError
from gemel_engine.memory import footprint, unique_storage_bytes
from gemel_engine.queries import Task
from gemel_engine.runtime.budget import MemoryBudget, UnitInfo
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.executor import Executor, untie
from gemel_engine.runtime.metrics import PrometheusCollector, QueryMetrics, RuntimeMetrics
from gemel_engine.runtime.profile import LayerProfile, ModelProfile
from gemel_engine.runtime.scheduler import CameraFrame, RuntimeQuery, ScheduleLoop, get_scheduler, run_frames
from gemel_engine.runtime.stream import serve_offline
from gemel_engine.runtime.swap import (
    BandwidthModel,
    EvictionPolicy,
    SwapManager,
    get_policy,
    register_policy,
    unit_tensors,
)
from tests.conftest import TinyNet, requires_cuda

PRESENCE = Task("presence", ("car", "bus", "truck"))


def _frames(camera: str, count: int, fps: float, *, seed: int = 1, size: int = 32) -> list[CameraFrame]:
    frames = []
    with open_source(f"synthetic://{camera}?seed={seed}&width=64&height=48&frames={count}") as source:
        for frame in source.frames():
            image, boxes = resize_frame(frame.image, frame.boxes, (size, size))
            frames.append(CameraFrame(camera, frame.index, frame.index / fps, image, boxes))
    return frames


def test_resident_bytes_count_a_shared_tensor_once(small_bundle: Path):
    models = load_bundle(small_bundle).models
    executor = Executor(models, budget=MemoryBudget(100_000_000), device="cpu")
    executor.preload()
    memory = executor.memory()
    measured = footprint(models)
    resident_tensors = [t for unit in executor.units.values() for t in unit_tensors(executor._module(unit))]
    assert memory["resident_bytes"] == measured.total_bytes == unique_storage_bytes(resident_tensors)
    assert memory["resident_bytes"] < measured.naive_param_bytes + measured.buffer_bytes
    shared = sum(unit.nbytes for unit in executor.units.values() if unit.shared)
    assert memory["shared_bytes"] == shared > 0
    assert memory["resident_bytes"] == shared + sum(memory["per_model_bytes"].values())
    # The same weights untied hold every shared tensor twice.
    unmerged = Executor(untie(models), budget=MemoryBudget(100_000_000), device="cpu")
    unmerged.preload()
    assert unmerged.memory()["resident_bytes"] == memory["resident_bytes"] + shared
    assert unmerged.memory()["shared_bytes"] == 0


def test_a_workload_that_does_not_fit_runs_by_swapping_within_its_budget(small_bundle: Path):
    models = untie(load_bundle(small_bundle).models)
    largest = max(footprint(m).total_bytes for m in models.values())
    budget = MemoryBudget(largest + 100_000)
    executor = Executor(models, budget=budget, device="cpu", clock=VirtualClock())
    assert executor.total_bytes() > budget.weight_bytes
    # One frame per batch and a loose SLO: the two queries alternate whatever the machine's speed.
    queries = [RuntimeQuery("qa", "a", PRESENCE, "n", 100.0, 1), RuntimeQuery("qb", "b", PRESENCE, "e", 100.0, 1)]
    frames = [*_frames("n", 5, 2.0), *_frames("e", 5, 2.0, seed=2)]
    report = serve_offline(executor, queries, frames, get_scheduler("time-sharing"))
    assert report["peak_resident_bytes"] <= budget.weight_bytes
    assert report["swapped_bytes"] > 4 * largest  # models were swapped back in, not loaded once
    assert report["drop_rate"] == 0
    assert sum(q["frames_total"] for q in report["queries"].values()) == len(frames)
    with pytest.raises(RuntimeBudgetError, match="largest model"):
        Executor(models, budget=MemoryBudget(largest // 2), device="cpu")
    with pytest.raises(RuntimeBudgetError, match="space-sharing needs"):
        get_scheduler("space-sharing").prepare(executor)


@pytest.mark.parametrize("name", ["time-sharing", "time-sharing-load-aware", "space-sharing", "merged", "merged-edf"])
def test_every_scheduler_pays_for_what_it_loads_before_the_first_frame(small_bundle: Path, name: str):
    scheduler = get_scheduler(name)
    models = load_bundle(small_bundle).models
    bandwidth = BandwidthModel(1e8, 0.001)  # 100 MB/s and 1 ms a transfer: loads are plainly visible
    clock = VirtualClock()
    executor = Executor(models if scheduler.merged else untie(models), budget=MemoryBudget(100_000_000),
                        device="cpu", clock=clock, bandwidth=bandwidth, keep_shared=scheduler.keep_shared)
    scheduler.prepare(executor)
    resident = [executor.units[key] for key in executor.swap.residency.resident]
    assert clock.now() == pytest.approx(sum(bandwidth.seconds(unit.nbytes) for unit in resident))
    assert (clock.now() > 0) == bool(resident)
    assert bool(resident) == (name in ("space-sharing", "merged", "merged-edf"))


def test_the_pick_policy_is_a_choice_separate_from_merging(small_bundle: Path):
    executor = Executor(untie(load_bundle(small_bundle).models), budget=MemoryBudget(100_000_000), device="cpu",
                        clock=VirtualClock(), bandwidth=BandwidthModel(1e6, 0.0))
    executor.preload(["a"])
    due_first_but_cold = (RuntimeQuery("qb", "b", PRESENCE, "e", 1.0), 1.0)
    due_later_but_loaded = (RuntimeQuery("qa", "a", PRESENCE, "n", 1.0), 1.5)
    candidates = [due_first_but_cold, due_later_but_loaded]
    for earliest_deadline in ("time-sharing", "merged-edf"):
        assert get_scheduler(earliest_deadline).pick(candidates, executor).name == "qb"
    for load_aware in ("time-sharing-load-aware", "merged"):
        assert get_scheduler(load_aware).pick(candidates, executor).name == "qa"


def test_eviction_policies_order_candidates_and_the_registry_refuses_duplicates():
    last_used = {"a": 3, "b": 1, "c": 2}
    assert get_policy("lru").order(["a", "b", "c"], last_used) == ["b", "c", "a"]
    assert get_policy("mru").order(["a", "b", "c"], last_used) == ["a", "c", "b"]

    class Duplicate(EvictionPolicy):
        name = "lru"

        def order(self, candidates, last_used):
            return list(candidates)

    with pytest.raises(RegistryError, match="already registered"):
        register_policy(Duplicate)


def test_shared_units_are_evicted_after_every_unshared_one():
    units = [
        UnitInfo("s", 10, frozenset({"a", "b"})), UnitInfo("u1", 10, frozenset({"a"})),
        UnitInfo("u2", 10, frozenset({"b"})), UnitInfo("n", 10, frozenset({"c"})),
    ]
    for keep_shared, evicted in ((True, ("u1",)), (False, ("s",))):
        swap = SwapManager({u.key: u for u in units}, MemoryBudget(30), policy="lru", keep_shared=keep_shared)
        swap.apply(swap.plan(["s", "u1", "u2"]))
        swap.touch(["s"])  # the shared unit is the least recently used...
        swap.touch(["u1"])
        swap.touch(["u2"])
        plan = swap.plan(["n"])
        assert plan.evict == evicted  # ...yet it stays when shared units are kept
        swap.apply(plan)
        assert swap.residency.resident_bytes == 30


def _tiny_profile(seconds: float) -> ModelProfile:
    layers = ("stem", "norm", "body", "head")
    return ModelProfile(
        arch="tinynet", builder_args={}, device="hand-made", input_size=(16, 16), batch_sizes=(1,),
        layers=tuple(LayerProfile(p, 0, (seconds if p == "head" else 0.0,), 0.0) for p in layers),
        load_simulated=True,
    )


def _serve_one_tiny_query(
    model: TinyNet, bandwidth: BandwidthModel, slo: float
) -> tuple[Executor, ScheduleLoop, QueryMetrics, float]:
    """Serve 8 frames at 8 fps to one time-shared query whose pass costs 0.1875 s (profiled), on a virtual clock;
    return the executor, the loop, the query's metrics and when the last frame settled."""
    executor = Executor(
        {"tiny": model}, budget=MemoryBudget(10_000_000), device="cpu", clock=VirtualClock(),
        bandwidth=bandwidth, profiles={"tiny": _tiny_profile(0.1875)}, timing="profiled",
    )
    query = RuntimeQuery("q", "tiny", Task("count", ("car",), count_edges=(1, 2)), "cam", slo, max_batch=1)
    frames = [CameraFrame("cam", i, i / 8, np.zeros((16, 16, 3), np.uint8), ()) for i in range(8)]
    metrics = RuntimeMetrics({"q": query.task}, memory=executor.memory, now=executor.clock.now, simulated=True)
    loop = ScheduleLoop(executor, [query], "time-sharing", metrics)
    end = run_frames(loop, frames)
    return executor, loop, metrics["q"], end


def test_drops_follow_a_hand_checked_schedule():
    # One query at 8 fps, SLO 0.28125 s, every frame costs 0.1875 s (profiled), loads are (almost) free:
    # frames 0, 1, 3, 4, 6, 7 finish at 0.1875, 0.375, 0.5625, 0.75, 0.9375, 1.125; frames 2 and 5 cannot.
    torch.manual_seed(0)
    _, loop, q, end = _serve_one_tiny_query(TinyNet(), BandwidthModel(1e18, 0.0), 0.28125)
    assert end == pytest.approx(1.125)
    assert (q.frames_total, q.processed_total, q.dropped_total) == (8, 6, 2)
    assert sorted(q.latencies) == pytest.approx([0.1875] * 3 + [0.25] * 3)
    assert q.latency_quantile(0.5) == pytest.approx(0.21875)
    assert loop.batches == 6


def test_a_query_whose_cold_load_outlasts_its_slo_gets_its_model_loaded_instead_of_starving():
    # As above with an SLO of 0.3 s and loading the whole model taking 0.5 s: no frame can be served cold, so the
    # loop loads the model first (the clock reaches 0.5). Frames 0-3 are stale by then; frame 4 runs 0.5-0.6875,
    # frame 5 0.6875-0.875; frame 6 (due 1.05) cannot finish and is dropped; frame 7 runs 0.875-1.0625. Before,
    # every frame was dropped because its load made it late, and the model never loaded.
    torch.manual_seed(0)
    model = TinyNet()
    nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    executor, loop, q, end = _serve_one_tiny_query(model, BandwidthModel(nbytes / 0.5, 0.0), 0.3)
    assert end == pytest.approx(1.0625)
    assert (q.frames_total, q.processed_total, q.dropped_total) == (8, 3, 5)
    assert (loop.loads_only, loop.batches) == (1, 3)
    assert executor.missing_bytes("tiny") == 0


@pytest.mark.parametrize("scheduler", ["time-sharing", "time-sharing-load-aware"])
def test_queries_tied_on_deadline_take_turns_instead_of_one_starving(scheduler: str):
    # Two queries on one 4 fps camera, SLO 0.3 s, each pass 0.2 s (profiled), both models resident: only one of
    # each pair of frames can run in time. Ties go to the query served least recently, so they alternate; before,
    # the first name won every tie and the other query never ran.
    torch.manual_seed(0)
    profile = _tiny_profile(0.2)
    executor = Executor(
        {"a": TinyNet(), "b": TinyNet()}, budget=MemoryBudget(10_000_000), device="cpu", clock=VirtualClock(),
        bandwidth=BandwidthModel(1e18, 0.0), profiles={"a": profile, "b": profile}, timing="profiled",
    )
    executor.preload()
    task = Task("count", ("car",), count_edges=(1, 2))
    queries = [RuntimeQuery(name, name, task, "cam", 0.3, max_batch=1) for name in ("a", "b")]
    frames = [CameraFrame("cam", i, i / 4, np.zeros((16, 16, 3), np.uint8), ()) for i in range(8)]
    metrics = RuntimeMetrics({"a": task, "b": task}, memory=executor.memory, now=executor.clock.now, simulated=True)
    run_frames(ScheduleLoop(executor, queries, scheduler, metrics), frames)
    assert [(metrics[n].processed_total, metrics[n].dropped_total) for n in ("a", "b")] == [(4, 4), (4, 4)]


def test_a_dropped_frame_reuses_the_last_result_for_accuracy():
    query = QueryMetrics("q", PRESENCE)
    query.dropped(1)  # before any result: counted wrong
    query.processed(1, 1, latency=0.1, at=1.0)
    query.dropped(1)  # reuses 1: right
    query.dropped(0)  # reuses 1: wrong
    assert query.effective_accuracy() == pytest.approx(2 / 4)
    assert query.drop_rate == pytest.approx(3 / 4)


def test_the_prometheus_endpoint_serves_the_runtimes_figures_over_http(small_bundle: Path):
    executor = Executor(load_bundle(small_bundle).models, budget=MemoryBudget(100_000_000), device="cpu")
    query = RuntimeQuery("north_cars", "a", PRESENCE, "n", 100.0)
    metrics = RuntimeMetrics({"north_cars": PRESENCE}, memory=executor.memory, now=executor.clock.now, simulated=True,
                             deployment=7)
    get_scheduler("merged").prepare(executor)
    run_frames(ScheduleLoop(executor, [query], "merged", metrics), _frames("n", 5, 2.0))
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(metrics.snapshot))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        thread.join()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if not line.startswith("#")
    }
    snapshot = metrics.snapshot()
    assert values['gemel_resident_bytes{kind="shared"}'] == snapshot["memory"]["shared_bytes"] > 0
    assert values["gemel_budget_bytes"] == 100_000_000
    assert values['gemel_query_frames_total{query="north_cars"}'] == 5
    assert values['gemel_query_frames_dropped_total{query="north_cars"}'] == 0
    assert values["gemel_transfer_simulated"] == 1.0
    assert any(key.startswith('gemel_query_latency_seconds{') and 'quantile="0.5"' in key for key in values), body


@requires_cuda
def test_cuda_swapping_gives_the_cpu_results_and_stays_within_the_budget(small_bundle: Path):
    reference = load_bundle(small_bundle).models
    models = untie(load_bundle(small_bundle).models)
    largest = max(footprint(m).total_bytes for m in models.values())
    budget = MemoryBudget(largest + 1_000_000)
    executor = Executor(models, budget=budget, device="cuda")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for name in ("a", "b", "a", "b"):
        result = executor.infer(name, images, PRESENCE)
        with torch.no_grad():
            from gemel_engine.queries import predict

            assert result.predictions == predict(reference[name], images, PRESENCE)
        assert executor.swap.residency.resident_bytes <= budget.weight_bytes
        assert torch.cuda.memory_allocated() - base <= budget.weight_bytes + 64 * 1024 * 1024
    assert executor.swap.stats.loaded_bytes > executor.total_bytes()
    assert all(t.is_pinned() for unit in executor.units.values() for t in unit_tensors(executor._module(unit))
               if not t.is_cuda)
    executor.close()
