from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gemel_engine.bundle import load_bundle
from gemel_engine.cli import main
from gemel_engine.errors import UsageError
from gemel_engine.events import CancelToken
from gemel_engine.layers import InstanceCandidate, LayerSignature
from gemel_engine.plan import LayerRef, MergeInstance, MergePlan
from gemel_engine.queries import evaluate
from gemel_engine.search import (
    RetrainBudget,
    SearchConfig,
    SearchError,
    get_strategy,
    register_strategy,
    resolve_bundle,
    run_search,
    saved_configs,
)
from gemel_engine.search import engine as search_engine
from gemel_engine.search.engine import _affected
from gemel_engine.search.retrain import RetrainOutcome
from gemel_engine.search.strategies import Gemel, GemelPlus, SharedStem
from gemel_engine.sharing import verify_sharing
from gemel_engine.workload import camera_frames, query_data
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
SIGNATURE = LayerSignature("Conv2d", ((8, 8, 3, 3),), "float32", 1)


def _candidate(layer: str, *models: str, size: int = 100, order: int = 0) -> InstanceCandidate:
    return InstanceCandidate(SIGNATURE, tuple(LayerRef(m, layer) for m in models), size, order)


def _outcome(failing: set[str], models: set[str]) -> RetrainOutcome:
    return RetrainOutcome(dict.fromkeys(models, 0.5), {m: m not in failing for m in models}, 10, "budget", 1.0)


def _layers(trial) -> list[str]:
    return [i.members[0].layer for i in trial]


def test_gemel_groups_consecutive_instances_with_the_same_model_set():
    candidates = [_candidate("l1", "a", "b"), _candidate("l2", "a", "b"), _candidate("l3", "a", "c"),
                  _candidate("l4", "a", "b")]
    queue = Gemel().initial_queue(candidates, {})
    assert [_layers(t) for t in queue] == [["l1", "l2"], ["l3"], ["l4"]]


def test_gemel_keeps_the_trial_for_models_that_met_their_targets_then_halves():
    trial = [_candidate(f"l{i}", "a", "b", "c").to_instance() for i in range(4)]
    [reduced] = Gemel().after_failure(trial, _outcome({"c"}, {"a", "b", "c"}))
    assert all({m.model for m in i.members} == {"a", "b"} for i in reduced)
    # Every model failed: the first half, then the second (the authors' code tries the second half later).
    halved, rest = Gemel().after_failure(reduced, _outcome({"a", "b"}, {"a", "b"}))
    assert (_layers(halved), _layers(rest)) == (["l0", "l1"], ["l2", "l3"])
    assert Gemel().after_failure(halved[:1], _outcome({"a", "b"}, {"a", "b"})) == []


def test_gemel_moves_on_when_half_a_failed_trial_saves_less_than_the_next_trial():
    failed = [_candidate(f"l{i}", "a", "b").to_instance() for i in range(4)]
    everyone_failed = _outcome({"a", "b"}, {"a", "b"})
    gemel = Gemel()
    gemel.saving = _bytes_saved  # 100 bytes a layer
    bigger_next = [_candidate(f"n{i}", "a", "c").to_instance() for i in range(3)]
    assert gemel.after_failure(failed, everyone_failed, bigger_next) == []
    smaller_next = [_candidate("n0", "a", "c").to_instance()]
    assert [_layers(t) for t in gemel.after_failure(failed, everyone_failed, smaller_next)] == [
        ["l0", "l1"], ["l2", "l3"]]


def test_gemel_plus_doubles_its_trials_and_splits_a_failed_one_in_halves_when_every_model_failed():
    models = [("a", "b"), ("a", "c"), ("a", "b"), ("b", "c"), ("a", "b"), ("a", "c"), ("a", "b"), ("b", "c")]
    candidates = [_candidate(f"l{i}", *pair) for i, pair in enumerate(models)]
    queue = GemelPlus().initial_queue(candidates, {})
    assert [_layers(t) for t in queue] == [["l0"], ["l1", "l2"], ["l3", "l4", "l5", "l6"], ["l7"]]
    everything = [_candidate(f"l{i}", "a", "b").to_instance() for i in range(5)]
    first, second = GemelPlus().after_failure(everything, _outcome({"a"}, {"a", "b"}))
    assert (_layers(first), _layers(second)) == (["l0", "l1", "l2"], ["l3", "l4"])
    assert GemelPlus.options.mode == "shape" and GemelPlus.options.distill > 0


def test_gemel_plus_keeps_a_failed_trial_for_the_models_that_met_their_targets():
    # A detector sharing a classifier pair's layers misses its target: the classifiers keep every layer of the
    # trial between them rather than waiting for halves the detector would fail again.
    trial = [_candidate(f"l{i}", "a", "b", "detector").to_instance() for i in range(4)]
    [reduced] = GemelPlus().after_failure(trial, _outcome({"detector"}, {"a", "b", "detector"}))
    assert _layers(reduced) == ["l0", "l1", "l2", "l3"]
    assert all({m.model for m in i.members} == {"a", "b"} for i in reduced)


def test_gemel_plus_retries_a_hopeless_trial_without_only_the_models_that_could_not_get_there():
    # The round stopped as hopeless because of c; b was below target but still on its way; a and d met theirs.
    trial = [_candidate(f"l{i}", "a", "b", "c", "d").to_instance() for i in range(3)]
    hopeless = dataclasses.replace(_outcome({"b", "c"}, {"a", "b", "c", "d"}), stopped="hopeless",
                                   hopeless=frozenset({"c"}))
    [retried] = GemelPlus().after_failure(trial, hopeless)
    assert _layers(retried) == ["l0", "l1", "l2"]
    assert all({m.model for m in i.members} == {"a", "b", "d"} for i in retried)
    # gemel, as the authors describe it, keeps the trial only for the models that passed at the stopping check.
    [kept] = Gemel().after_failure(trial, hopeless)
    assert all({m.model for m in i.members} == {"a", "d"} for i in kept)
    # Every model below target was hopeless: nothing is on its way, so gemel+ keeps the trial for the others.
    everyone = dataclasses.replace(hopeless, hopeless=frozenset({"b", "c"}))
    [kept] = GemelPlus().after_failure(trial, everyone)
    assert all({m.model for m in i.members} == {"a", "d"} for i in kept)


def test_a_trend_is_fitted_to_the_latest_checks_and_a_falling_one_is_projected_flat():
    from gemel_engine.search.retrain import projected_accuracy

    assert projected_accuracy([(0, 0.5)], 100) is None
    # One noisy check does not sink a rising trend: the line through the latest three (0.60, 0.70, 0.66; the
    # first, at step 0, is past the window) reads 0.683 at step 60 and rises 0.0015 a step.
    rising = [(0, 0.1), (20, 0.60), (40, 0.70), (60, 0.66)]
    assert projected_accuracy(rising, 120) == pytest.approx(0.68333 + 0.0015 * 60, abs=1e-4)
    # Checks come every 5 steps near the target: the slope is per step, so a denser check adds no optimism.
    assert projected_accuracy([(50, 0.70), (55, 0.71), (60, 0.72)], 120) == pytest.approx(0.72 + 0.002 * 60)
    assert projected_accuracy([(20, 0.8), (40, 0.7), (60, 0.6)], 120) == pytest.approx(0.6)


def test_stem_shares_a_prefix_of_same_architecture_models_in_module_order():
    candidates = [_candidate("deep", "a", "b", size=900, order=5), _candidate("early", "a", "b", order=0),
                  _candidate("mixed", "a", "c", order=1)]
    [prefix] = SharedStem().initial_queue(candidates, {"a": "resnet18", "b": "resnet18", "c": "resnet34"})
    assert _layers(prefix) == ["early", "deep"]
    assert _layers(SharedStem().after_failure(prefix, _outcome({"a"}, {"a", "b"}))[0]) == ["early"]


def test_affected_models_include_everything_connected_through_shared_layers():
    accepted = MergePlan((MergeInstance((LayerRef("a", "x"), LayerRef("b", "x"))),))
    trial = [MergeInstance((LayerRef("b", "y"), LayerRef("c", "y")))]
    assert _affected(accepted, trial) == ["a", "b", "c"]
    assert _affected(accepted, [MergeInstance((LayerRef("d", "y"), LayerRef("e", "y")))]) == ["d", "e"]


def test_strategies_are_registered_once_and_unknown_names_are_refused():
    with pytest.raises(UsageError, match="already registered"):
        register_strategy(Gemel)
    with pytest.raises(UsageError, match="unknown strategy 'magic'"):
        get_strategy("magic")


def test_gemel_merges_the_tiny_workload_and_every_query_keeps_its_target(tiny_workload, tmp_path: Path):
    events: list[dict] = []

    def record(event: dict) -> None:
        json.dumps(event)
        if event["type"] == "config.accepted":
            assert Path(event["bundle"], "manifest.json").is_file()  # usable before the search ends
        events.append(event)

    result = run_search(tiny_workload, tmp_path / "job", SearchConfig(strategy="gemel"), progress=record)
    types = [e["type"] for e in events]
    assert types[0] == "search.preparing" and types[-1] == "search.finished"
    assert "config.accepted" in types and "round.finished" in types
    assert result.savings_fraction > 0.3
    assert all(q["meets_target"] for q in result.queries)
    assert result.timeline[0] == [0.0, 0.0] and result.timeline[-1][1] > 0
    bundle = load_bundle(result.bundle)
    verify_sharing(bundle.models, bundle.plan)
    for entry in tiny_workload.queries:
        frames = camera_frames(tiny_workload, tiny_workload.camera(entry.query.camera))
        val = query_data(tiny_workload, entry, frames).val
        accuracy = evaluate(bundle.models[entry.name], val.images, val.targets, entry.query.task)
        merged = next(q["merged_accuracy"] for q in result.queries if q["name"] == entry.name)
        # A query no round retrained reports the figure its workload recorded (to four decimals).
        assert accuracy == pytest.approx(merged, abs=1e-4)
    saved = json.loads((tmp_path / "job" / "result.json").read_text())
    assert saved["savings_fraction"] == pytest.approx(result.savings_fraction)


def test_the_none_strategy_writes_the_unmerged_bundle(tiny_workload, tmp_path: Path):
    result = run_search(tiny_workload, tmp_path / "job", SearchConfig(strategy="none"))
    assert result.rounds == 0 and result.merged_param_bytes == result.unmerged_param_bytes
    assert all(q["merged_accuracy"] == pytest.approx(q["unmerged_accuracy"], abs=1e-3) for q in result.queries)


# A tiny search of many rounds: one step each, and the members' mean as the warm start (from the first member's
# weights the tiny queries accept every shareable layer in round 1, after 0 steps; from the mean, 13 rounds).
HARD = SearchConfig(strategy="gemel+", warm_start="mean", round_budget=RetrainBudget(max_steps=1, eval_every=1))


def test_a_cancelled_search_resumes_after_its_last_finished_round(tiny_workload, tmp_path: Path):

    def cancel_after_round(last: int, events: list[dict], token: CancelToken) -> Callable[[dict], None]:
        def record(event: dict) -> None:
            events.append(event)
            if event["type"] == "round.finished" and event["round"] == last:
                token.cancel()
        return record

    token = CancelToken()
    first = run_search(tiny_workload, tmp_path / "job", HARD, progress=cancel_after_round(2, [], token), cancel=token)
    assert first.status == "cancelled" and first.rounds == 2
    state = json.loads((tmp_path / "job" / "state.json").read_text())
    assert state["rounds"] == 2 and state["queue"]
    # The resumed search needs one round to show where it went on from.
    events: list[dict] = []
    token = CancelToken()
    second = run_search(tiny_workload, tmp_path / "job", HARD, progress=cancel_after_round(3, events, token),
                        cancel=token)
    started = next(event for event in events if event["type"] == "search.started")
    assert started["resumed"] is True and started["rounds"] == 2
    assert next(e["round"] for e in events if e["type"] == "round.started") == 3
    assert second.rounds == 3


class _SteppedClock:
    """A monotonic clock for the search module that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_search_keeps_time_for_measuring_and_saving_so_it_ends_within_its_budget(
    tiny_workload, tmp_path: Path, monkeypatch
):
    # Measuring and saving the starting configuration "takes" 50 s of a 90 s budget: a round accepted at its
    # deadline would need about as long again, so no round may start once less than that is left.
    clock = _SteppedClock()
    monkeypatch.setattr(search_engine, "time", clock)
    save_config = search_engine.MergeSearch._save_config

    def slow_save_config(self, *args, **kwargs):
        clock.now += 50.0
        return save_config(self, *args, **kwargs)

    monkeypatch.setattr(search_engine.MergeSearch, "_save_config", slow_save_config)
    events: list[dict] = []
    config = dataclasses.replace(HARD, budget_minutes=1.5)
    result = run_search(tiny_workload, tmp_path / "job", config, progress=events.append)
    assert (result.status, result.rounds) == ("budget", 0)
    assert not [e for e in events if e["type"] == "round.started"]
    assert clock.now - 1000.0 <= 90.0


def test_resuming_with_another_strategy_is_refused(tiny_workload, tmp_path: Path):
    token = CancelToken()
    token.cancel()
    run_search(tiny_workload, tmp_path / "job", HARD, cancel=token)
    with pytest.raises(SearchError, match="holds a 'gemel\\+' search"):
        run_search(tiny_workload, tmp_path / "job", SearchConfig(strategy="gemel"))


# Each of the two merge processes (killed after two rounds, then resumed) gets this long; the test gets both and a
# margin: under load a process spends most of it importing torch and measuring the unmerged models.
MERGE_PROCESS_LIMIT_S = 280


@pytest.mark.timeout(2 * MERGE_PROCESS_LIMIT_S + 40)
def test_a_search_killed_with_sigkill_resumes_and_keeps_every_accepted_configuration(tiny_workload, tmp_path: Path):
    job = tmp_path / "job"
    command = [
        sys.executable, "-m", "gemel_engine", "merge", "--workload", str(tiny_workload.root / "workload.json"),
        "--out", str(job), "--strategy", "gemel+", "--warm-start", "mean", "--round-steps", "1", "--json",  # HARD's
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = job / "state.json"
    wait_until(lambda: process.poll() is not None or (
        state_path.exists() and json.loads(state_path.read_text())["rounds"] >= 2), timeout=MERGE_PROCESS_LIMIT_S,
        what="two finished rounds")
    assert process.poll() is None, "the search ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = json.loads(state_path.read_text())
    bundles_before = {b["path"] for b in killed["bundles"]}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True,
                            timeout=MERGE_PROCESS_LIMIT_S)
    final = json.loads(result.stdout)
    resumed = json.loads(state_path.read_text())
    assert resumed["rounds"] > killed["rounds"]
    assert bundles_before <= {b["path"] for b in resumed["bundles"]}
    assert all((job / path / "manifest.json").is_file() for path in bundles_before)  # relative to the job
    assert final["rounds"] == resumed["rounds"]


def test_joint_retraining_stops_as_soon_as_targets_are_met_or_hopeless(tiny_workload):
    from gemel_engine.modelset import ModelSet
    from gemel_engine.search.retrain import QueryData, joint_retrain

    entry = tiny_workload.queries[0]
    frames = camera_frames(tiny_workload, tiny_workload.camera(entry.query.camera))
    labelled = query_data(tiny_workload, entry, frames)
    train, val = labelled.train, labelled.val
    models = ModelSet({entry.name: tiny_workload.load_model(entry)})
    easy = {entry.name: QueryData(entry.name, entry.query.task, train, val, required=0.0)}
    assert joint_retrain(models, [entry.name], easy, RetrainBudget()).stopped == "met"
    impossible = {entry.name: QueryData(entry.name, entry.query.task, train, val, required=1.01)}
    outcome = joint_retrain(models, [entry.name], impossible, RetrainBudget(max_steps=40, eval_every=5))
    assert outcome.stopped == "hopeless" and outcome.steps < 40
    assert outcome.failing == outcome.hopeless == {entry.name}


def test_the_merge_command_prints_the_documented_json(tiny_workload, tmp_path: Path, capsys):
    code = main(["merge", "--workload", str(tiny_workload.root / "workload.json"), "--out", str(tmp_path / "j"),
                 "--strategy", "stem", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"strategy", "unmerged_param_bytes", "merged_param_bytes", "savings_fraction", "queries", "bundle",
            "timeline"} <= set(data)
    documented = {"name", "unmerged_accuracy", "target", "merged_accuracy", "meets_target"}
    held_out = {"unmerged_test_accuracy", "test_target", "merged_test_accuracy", "merged_test_interval",
                "meets_target_on_test"}
    for query in data["queries"]:
        assert documented | held_out <= set(query)
        low, high = query["merged_test_interval"]
        assert low <= query["merged_test_accuracy"] <= high
        assert query["meets_target_on_test"] == (query["merged_test_accuracy"] >= query["test_target"])
    assert main(["inspect", str(tmp_path / "j"), "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["path"] == data["bundle"]
    by_model = {model["name"]: model for model in inspected["models"]}
    for query in data["queries"]:
        for key in held_out:
            assert by_model[query["name"]][key] == query[key]


def test_a_round_whose_check_passes_but_whose_final_validation_fails_accepts_nothing(tiny_workload):
    from gemel_engine.accuracy import measure
    from gemel_engine.modelset import ModelSet
    from gemel_engine.queries import predict
    from gemel_engine.search.retrain import QueryData, joint_retrain
    from gemel_engine.train import LabelledFrames

    entry = tiny_workload.queries[0]
    labelled = query_data(tiny_workload, entry, camera_frames(tiny_workload, tiny_workload.camera(entry.query.camera)))
    model = tiny_workload.load_model(entry)
    full = measure(model, labelled.val, entry.query.task, calibration=labelled.train, interval=False).accuracy
    assert full < 1.0, "the unmerged model must miss some validation frames for this test"
    predictions = predict(model, labelled.val.images, entry.query.task)
    right = [i for i, (p, t) in enumerate(zip(predictions, labelled.val.targets, strict=True)) if p == t]
    lucky = LabelledFrames(labelled.val.images[right], [labelled.val.targets[i] for i in right])
    required = (full + 1.0) / 2  # the lucky check frames pass it, the whole validation set does not
    data = {entry.name: QueryData(entry.name, entry.query.task, labelled.train, labelled.val, required, check=lucky)}
    stops_at_once = RetrainBudget(max_steps=5, eval_every=5)
    outcome = joint_retrain(ModelSet({entry.name: model}), [entry.name], data, stops_at_once)
    # The check passed before any step; the final measurement did not, so the round went on, its check bar
    # raised out of reach, and ended on its step budget (or as hopeless) with nothing accepted.
    assert outcome.false_stops == 1 and outcome.steps == 5 and outcome.stopped in ("budget", "hopeless")
    assert outcome.initial_accuracies[entry.name] == 1.0
    assert not outcome.all_met and outcome.failing == {entry.name}
    assert outcome.lower_margins[entry.name] == pytest.approx(outcome.accuracies[entry.name] - required)


def test_a_round_judged_at_a_confidence_pairs_the_merged_model_with_the_unmerged_one(tiny_workload):
    from gemel_engine.accuracy import TargetTest, measured_predictions
    from gemel_engine.modelset import ModelSet
    from gemel_engine.search.retrain import QueryData, joint_retrain

    entry = tiny_workload.queries[0]
    labelled = query_data(tiny_workload, entry, camera_frames(tiny_workload, tiny_workload.camera(entry.query.camera)))
    model = tiny_workload.load_model(entry)
    (reference,) = measured_predictions(model, (labelled.val,), entry.query.task, calibration=labelled.train)
    accuracy = sum(p == t for p, t in zip(reference, labelled.val.targets, strict=True)) / len(labelled.val)
    # A relative target of 1.0 that the model meets exactly: the point figure accepts it; at 90% confidence a
    # merged model identical to the unmerged one leads it by 0 in every resample, so its bound is exactly 0.
    paired = TargetTest(accuracy, 0.9, tuple(reference), 1.0)
    assert paired.judge(reference, labelled.val, entry.query.task) == (pytest.approx(accuracy), pytest.approx(0.0))
    data = {entry.name: QueryData(entry.name, entry.query.task, labelled.train, labelled.val, accuracy,
                                  acceptance=TargetTest(accuracy, 0.9, tuple(reference), 1.0))}
    outcome = joint_retrain(ModelSet({entry.name: model}), [entry.name], data, RetrainBudget(max_steps=5))
    assert outcome.false_stops == 0 and outcome.stopped == "met"  # a margin of exactly 0 is met


def test_the_merge_command_names_a_missing_workload(capsys, tmp_path: Path):
    assert main(["merge", "--workload", str(tmp_path / "absent.json"), "--out", str(tmp_path)]) == 2
    assert "cannot read workload" in capsys.readouterr().err


def test_validation_comes_sooner_once_every_lagging_query_is_near_its_target():
    budget = RetrainBudget(eval_every=20, eval_every_near=5, near_margin=0.03)
    assert budget.interval([0.2, 0.01]) == 20
    assert budget.interval([0.02, 0.01]) == 5
    assert budget.interval([]) == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_steps": 0}, {"detection_batch_size": 0}, {"lr": -1.0}, {"distill": -0.5}, {"max_seconds": 0},
        {"near_margin": 2.0},
    ],
)
def test_bad_round_budgets_are_refused(kwargs):
    from gemel_engine.train import TrainingError

    with pytest.raises(TrainingError):
        RetrainBudget(**kwargs)


def test_a_detection_query_retrains_on_its_own_smaller_batches():
    import numpy as np

    from gemel_engine import zoo
    from gemel_engine.data.frames import Box
    from gemel_engine.queries import Task
    from gemel_engine.search.retrain import QueryData, _query_loss
    from gemel_engine.train import LabelledFrames

    task = Task("detection", ("car",))
    detector = zoo.get_model("fasterrcnn_resnet18_fpn", num_classes=2, min_size=64, max_size=64).train()
    batch_sizes: list[int] = []
    detector.backbone.register_forward_hook(lambda _module, inputs, _output: batch_sizes.append(len(inputs[0])))
    frames = LabelledFrames(np.zeros((20, 64, 64, 3), np.uint8), [task.target([Box("car", 5, 5, 30, 30)])] * 20)
    budget = RetrainBudget(batch_size=16, detection_batch_size=3)
    query = QueryData("d", task, frames, frames, required=0.0)
    loss = _query_loss(detector, query, budget, torch.Generator(), torch.device("cpu"))
    assert batch_sizes == [3]
    assert torch.isfinite(loss)


def _unreachable(workload):
    """The workload with every query asking for a perfect score: a round always checks and never passes."""
    import dataclasses

    from gemel_engine.queries import AccuracyTarget

    return dataclasses.replace(workload, queries=tuple(
        dataclasses.replace(e, query=dataclasses.replace(e.query, target=AccuracyTarget(relative=None, absolute=1.0)))
        for e in workload.queries
    ))


def test_a_round_reports_its_progress_and_a_cut_round_is_reported_with_its_steps(tiny_workload, tmp_path: Path):
    token = CancelToken()
    events: list[dict] = []

    def record(event: dict) -> None:
        events.append(event)
        if event["type"] == "round.progress":
            token.cancel()  # cut the round at its first check

    config = SearchConfig(strategy="gemel+", round_budget=RetrainBudget(max_steps=6, eval_every=2, eval_every_near=2))
    result = run_search(_unreachable(tiny_workload), tmp_path / "job", config, progress=record, cancel=token)
    [progress] = [e for e in events if e["type"] == "round.progress"]
    assert progress["round"] == 1 and progress["steps"] == 2 and progress["max_steps"] == 6
    assert set(progress["accuracy"]) == set(progress["required"]) and progress["budget_left"] is None
    [cut] = [e for e in events if e["type"] == "round.cut"]
    assert result.status == "cancelled" and result.rounds == 0
    unfinished = result.to_json()["unfinished_round"]
    assert unfinished["round"] == cut["round"] == 1 and unfinished["steps"] == 2 and unfinished["max_steps"] == 6
    assert unfinished["accuracy"] == progress["accuracy"] and unfinished["stopped"] == "cancelled"
    assert result.outcome == result.to_json()["outcome"]
    assert "inside round 1 after 2 of 6 steps" in result.outcome and "nothing saved" in result.outcome


@pytest.fixture
def micro_workload(monkeypatch, tmp_path: Path):
    """A real demo workload small enough to build in seconds: one short camera, two MobileNet-v3 presence queries
    trained two steps each (the session's tiny workload takes minutes on a busy CPU)."""
    from gemel_engine.data.sampling import SamplingSpec
    from gemel_engine.demo import SCALES, DemoScale, build_demo
    from gemel_engine.queries import Query as EngineQuery
    from gemel_engine.queries import Task
    from gemel_engine.train import TrainArgs
    from gemel_engine.workload import CameraSpec, QueryEntry

    camera = CameraSpec("micro_cam", "synthetic://micro_cam?seed=3&width=64&height=48&fps=5&frames=40",
                        SamplingSpec(size=(32, 32)), val_fraction=0.3, test_fraction=0.2, gap_seconds=0.0)
    task = Task("presence", ("car", "bus", "truck"))
    monkeypatch.setitem(SCALES, "micro", DemoScale(
        name="micro", cameras=(camera,),
        queries=tuple(QueryEntry(EngineQuery(n, "micro_cam", "mobilenet_v3_small", task)) for n in ("m_a", "m_b")),
        train={"mobilenet_v3_small": TrainArgs(steps=2, batch_size=8, device="cpu")},
    ))
    return build_demo("micro", tmp_path / "micro")


def test_the_set_up_before_the_first_round_is_reported_stage_by_stage(micro_workload, tmp_path: Path):
    events: list[dict] = []
    run_search(micro_workload, tmp_path / "job", SearchConfig(strategy="none", budget_minutes=30),
               progress=events.append)
    types = [e["type"] for e in events]
    started = types.index("search.started")
    assert started > 0 and set(types[:started]) == {"search.preparing"}  # no silence before search.started
    stages = [(e["stage"], e["done"], e["total"]) for e in events[:started]]
    assert stages == [
        ("loading the 2 unmerged models", None, None),
        ("reading the frames of camera micro_cam", 1, 1),
        ("labelling the frames of m_a", 1, 2),
        ("labelling the frames of m_b", 2, 2),
        # The unmerged figures come from the workload; a budgeted search times each query's retraining.
        ("timing the retraining of m_a", 1, 2),
        ("timing the retraining of m_b", 2, 2),
    ]


def test_a_rounds_progress_estimates_the_time_the_round_has_left(micro_workload, tmp_path: Path, monkeypatch):
    clock = _SteppedClock()
    monkeypatch.setattr(search_engine, "time", clock)

    def two_slow_steps_then_cancelled(models, affected, data, budget, *, on_check, **_kwargs):
        clock.now += 0.2  # two steps of 0.1 s
        on_check(2, dict.fromkeys(affected, 0.5))
        return RetrainOutcome(dict.fromkeys(affected, 0.5), dict.fromkeys(affected, False), 2, "cancelled", 0.2)

    monkeypatch.setattr(search_engine, "joint_retrain", two_slow_steps_then_cancelled)
    events: list[dict] = []
    config = SearchConfig(strategy="all", round_budget=RetrainBudget(max_steps=6))
    run_search(micro_workload, tmp_path / "job", config, progress=events.append)
    [progress] = [e for e in events if e["type"] == "round.progress"]
    # 4 steps left at the 0.1 s pace of the first 2: 0.4 s.
    assert progress["steps"] == 2 and progress["round_seconds_left"] == pytest.approx(0.4)


def test_a_round_estimates_its_time_left_from_the_pace_of_its_steps_so_far():
    from gemel_engine.search.engine import round_seconds_left

    assert round_seconds_left(60.0, 20, 120) == 300.0  # 3 s a step, 100 steps to go
    assert round_seconds_left(60.0, 120, 120) == 0.0
    assert round_seconds_left(0.0, 0, 120) is None  # no pace before the first step


def test_the_round_estimate_of_a_budget_hint_counts_each_query_at_its_batch_and_measured_pace():
    from gemel_engine.search import RetrainBudget, estimate_round_seconds
    from gemel_engine.train import TrainingError

    budget = RetrainBudget(max_steps=100, batch_size=32, detection_batch_size=8)
    # (32 × 0.01 + 8 × 0.5) s a step for 100 steps.
    assert estimate_round_seconds({"c": 0.01, "d": 0.5}, {"d"}, budget) == pytest.approx(432.0)
    assert estimate_round_seconds({}) == 0.0
    with pytest.raises(TrainingError, match="c: seconds per training frame"):
        estimate_round_seconds({"c": float("nan")})


def test_the_merge_progress_printer_shows_set_up_stages_and_the_round_estimate(capsys):
    from gemel_engine.cli import _MergeReporter

    reporter = _MergeReporter(quiet=False)
    reporter.live = False
    reporter({"type": "search.preparing", "stage": "measuring the unmerged model q1", "done": 2, "total": 6})
    reporter({"type": "search.preparing", "stage": "loading the 6 unmerged models", "done": None, "total": None})
    reporter({"type": "round.progress", "round": 1, "steps": 20, "max_steps": 120, "accuracy": {"q": 0.5},
              "required": {"q": 0.6}, "budget_left": 600.0, "round_seconds_left": 300.0})
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "preparing: measuring the unmerged model q1 (2 of 6)",
        "preparing: loading the 6 unmerged models",
        "round 1: step 20 of 120; q 0.500/0.600, round done in at most ~5.0 min, 10.0 min of budget left",
    ]


def test_the_outcome_of_a_search_cut_by_its_budget_says_what_budget_the_round_needed():
    from gemel_engine.search.engine import search_outcome

    cut = {"round": 1, "steps": 10, "max_steps": 120, "seconds": 60.0, "started_at": 30.0}
    # 30 s before the round, then 6 s a step for 120 steps: 750 s, about 13 minutes.
    assert search_outcome("budget", 0, 0, 300.0, cut) == (
        "the budget ended inside round 1 after 10 of 120 steps (60 s), so nothing saved; a budget of about 13 min "
        "would let this round run all 120 steps")
    saved = search_outcome("budget", 2, 50 * 2**20, 300.0, {**cut, "round": 3})
    assert saved == "the budget ended inside round 3 after 10 of 120 steps (60 s): 50.0 MiB saved by the " \
                    "configurations accepted before it"
    assert search_outcome("finished", 4, 2**20, 120.0, None) == "every trial was tried after 4 round(s) in 2.0 min: " \
                                                               "1.0 MiB saved"
    assert "before its first step" in search_outcome("budget", 0, 0, 10.0, {**cut, "steps": 0})
    assert search_outcome("budget", 0, 0, 378.0, None) == (
        "the budget ended before round 1 could start: loading the frames and measuring the unmerged models took "
        "the whole 6.3 min, so nothing saved; give it well over that")


def test_a_round_past_its_deadline_runs_no_further_check(tiny_workload):
    import time

    from gemel_engine.modelset import ModelSet
    from gemel_engine.search.retrain import QueryData, joint_retrain

    entry = tiny_workload.queries[0]
    labelled = query_data(tiny_workload, entry, camera_frames(tiny_workload, tiny_workload.camera(entry.query.camera)))
    data = {entry.name: QueryData(entry.name, entry.query.task, labelled.train, labelled.val, required=1.01)}
    checks: list[int] = []
    outcome = joint_retrain(ModelSet({entry.name: tiny_workload.load_model(entry)}), [entry.name], data,
                            RetrainBudget(max_steps=10, eval_every=1), deadline=time.monotonic(),
                            on_check=lambda steps, _: checks.append(steps))
    assert outcome.stopped == "deadline" and outcome.steps == 0 and checks == []


def test_a_job_run_from_one_folder_is_read_from_any_other_and_after_it_moves(
    micro_workload, tmp_path: Path, monkeypatch, capsys
):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    assert main(["merge", "--workload", str(micro_workload.root / "workload.json"), "--out", "job",
                 "--strategy", "none", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    job = here / "job"
    assert Path(printed["bundle"]).is_absolute() and Path(printed["bundle"]).parent.parent == job
    assert [record["path"] for record in json.loads((job / "state.json").read_text())["bundles"]] == [
        "bundles/config-000"]
    assert all(Path(record["path"]).is_absolute() for record in saved_configs("job"))

    monkeypatch.chdir(elsewhere)
    assert main(["inspect", str(job), "--json"]) == 0
    assert {m["name"] for m in json.loads(capsys.readouterr().out)["models"]} == {"m_a", "m_b"}
    moved = elsewhere / "moved-job"
    job.rename(moved)
    assert resolve_bundle(moved) == moved / "bundles" / "config-000"
    assert main(["inspect", str(moved)]) == 0
    with pytest.raises(SearchError, match="neither a bundle"):
        resolve_bundle(elsewhere)


def _model_costs(costs: dict[str, float]) -> Callable[[list[MergeInstance]], float]:
    return lambda trial: sum(costs[name] for name in {m.model for instance in trial for m in instance.members})


def _bytes_saved(trial: list[MergeInstance]) -> int:
    return sum(100 * (len(instance.members) - 1) for instance in trial)


def test_a_trial_leaves_out_the_model_costliest_per_byte_until_its_round_fits_the_time_left():
    trial = [_candidate("a", "cls1", "cls2", "det").to_instance(), _candidate("b", "cls1", "det").to_instance()]
    costs = _model_costs({"cls1": 10.0, "cls2": 10.0, "det": 100.0})

    fitted, left_out = search_engine.size_trial_to_time(trial, 25.0, estimate=costs, saving=_bytes_saved)
    # Leaving det out cuts 100 s for 200 bytes; cls1 10 s for 200, cls2 10 s for 100.
    assert left_out == ["det"]
    assert [sorted(m.model for m in instance.members) for instance in fitted] == [["cls1", "cls2"]]

    assert search_engine.size_trial_to_time(trial, 5.0, estimate=costs, saving=_bytes_saved) == ([], ["det", "cls1"])
    assert search_engine.size_trial_to_time(trial, 1000.0, estimate=costs, saving=_bytes_saved) == (trial, [])


def test_a_query_pace_adds_up_steps_checks_and_closing_work():
    from gemel_engine.search.retrain import QueryPace

    pace = QueryPace(step_seconds=2.0, calibration_seconds=3.0, frame_seconds=0.01)
    budget = RetrainBudget(max_steps=40, eval_every=20)
    closing = 2 * 3.0 + (2 * 100 + 50) * 0.01
    assert pace.closing_seconds(val_frames=100, test_frames=50) == pytest.approx(closing)
    # 40 steps, checks before the first step and after steps 20 and 40, each a calibration and 30 frames.
    full = pace.round_seconds(budget, check_frames=30, val_frames=100, test_frames=50)
    assert full == pytest.approx(40 * 2.0 + 3 * (3.0 + 30 * 0.01) + closing)
    short = pace.round_seconds(budget, check_frames=30, val_frames=100, test_frames=50, steps=10)
    assert short == pytest.approx(10 * 2.0 + 2 * (3.0 + 30 * 0.01) + closing)


def test_timing_a_querys_retraining_leaves_its_model_untouched(micro_workload):
    from gemel_engine.search.retrain import QueryData, measure_pace

    entry = micro_workload.queries[0]
    frames = query_data(micro_workload, entry, camera_frames(micro_workload, micro_workload.cameras[0]))
    model = micro_workload.load_model(entry)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pace = measure_pace(model, QueryData(entry.name, entry.query.task, frames.train, frames.val, 0.5),
                        RetrainBudget(batch_size=4))
    assert pace.step_seconds > 0 and pace.calibration_seconds > 0 and pace.frame_seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_budgeted_search_skips_a_trial_it_cannot_afford_and_says_so(micro_workload, tmp_path: Path, monkeypatch):
    from gemel_engine.search.retrain import QueryPace

    # Each training step "takes" 100 s: no round of 120 steps fits a 1-minute budget.
    monkeypatch.setattr(search_engine, "measure_pace", lambda *_args, **_kw: QueryPace(100.0, 0.0, 0.0))
    events: list[dict] = []
    result = run_search(micro_workload, tmp_path / "job", SearchConfig(strategy="gemel+", budget_minutes=1),
                        progress=events.append)
    kinds = [event["type"] for event in events]
    assert "round.started" not in kinds and "trial.skipped" in kinds
    skipped = next(event for event in events if event["type"] == "trial.skipped")
    assert skipped["estimated_seconds"] >= 2 * 120 * 100.0 and skipped["trial_models"] == ["m_a", "m_b"]
    assert result.status == "budget" and result.rounds == 0
    assert "no trial left fits" in result.outcome and "nothing saved" in result.outcome
    # The trial stays queued for a resumed search with more time.
    assert len(json.loads((tmp_path / "job" / "state.json").read_text())["queue"]) == 1


def test_the_start_configuration_takes_the_unmerged_figures_the_workload_recorded(
    micro_workload, tmp_path: Path, monkeypatch
):
    measured: list[str] = []
    real = search_engine.measure_sets

    def counting(model, sets, task, **kwargs):
        measured.append(task.kind)
        return real(model, sets, task, **kwargs)

    monkeypatch.setattr(search_engine, "measure_sets", counting)
    result = run_search(micro_workload, tmp_path / "job", SearchConfig(strategy="none"))
    assert measured == []
    for query, entry in zip(result.queries, micro_workload.queries, strict=True):
        assert query["merged_accuracy"] == entry.unmerged_accuracy
        assert query["merged_test_accuracy"] == round(entry.unmerged_test.accuracy, 4)
        assert query["merged_val_interval"] == [round(v, 4) for v in entry.unmerged_val_interval]


def test_a_trial_derived_from_a_failed_one_continues_from_the_weights_that_round_trained(
    micro_workload, tmp_path: Path, monkeypatch
):
    token = CancelToken()
    events: list[dict] = []
    weights: list[tuple[dict, dict]] = []  # per round: the affected models' weights as it starts and as it ends
    real_retrain = search_engine.joint_retrain

    def snapshot(models, affected) -> dict:
        return {(n, k): v.detach().clone() for n in affected for k, v in models[n].state_dict().items()}

    def instrumented(models, affected, data, *args, **kwargs):
        # The micro models can score 1.0 on their few frames: a bar above 1 makes every round train and fail.
        unreachable = {name: dataclasses.replace(query, required=1.5) for name, query in data.items()}
        start = snapshot(models, affected)
        outcome = real_retrain(models, affected, unreachable, *args, **kwargs)
        weights.append((start, snapshot(models, affected)))
        return outcome

    def record(event: dict) -> None:
        events.append(event)
        if event["type"] == "round.finished" and event["round"] == 2:
            token.cancel()

    monkeypatch.setattr(search_engine, "joint_retrain", instrumented)
    budget = RetrainBudget(max_steps=4, eval_every=2, eval_every_near=2)
    run_search(micro_workload, tmp_path / "job", SearchConfig(strategy="gemel", round_budget=budget),
               progress=record, cancel=token)
    started = [e for e in events if e["type"] == "round.started"]
    finished = [e for e in events if e["type"] == "round.finished"]
    assert [e["accepted"] for e in finished] == [False, False]
    # Round 2 is the first half of the failed round 1: it starts from what round 1 trained, not from the unmerged
    # models (a fresh start would tie the first member's weights again).
    assert [e["continued_from_round"] for e in started] == [None, 1]
    (start_1, end_1), (start_2, _) = weights
    assert any(not torch.equal(start_1[key], end_1[key]) for key in end_1)  # round 1 did train
    assert start_2.keys() == end_1.keys()
    assert all(torch.equal(start_2[key], end_1[key]) for key in end_1)
    assert finished[1]["initial_accuracy"] == finished[0]["check_accuracy"]


def test_a_searchs_warm_start_overrides_its_strategys(micro_workload, tmp_path: Path, monkeypatch):
    token = CancelToken()
    starts: list[dict[str, dict[str, torch.Tensor]]] = []
    real_retrain = search_engine.joint_retrain

    def instrumented(models, affected, *args, **kwargs):
        starts.append({n: {k: v.detach().clone() for k, v in models[n].state_dict().items()} for n in affected})
        token.cancel()  # the first round's starting weights are all this test reads
        return real_retrain(models, affected, *args, **kwargs)

    with pytest.raises(SearchError, match="warm_start"):
        SearchConfig(strategy="gemel+", warm_start="median")
    # The micro queries are trained alike; m_b's weights are moved off m_a's so a warm start shows which it took.
    from gemel_engine import zoo

    entry = micro_workload.queries[1]
    moved = micro_workload.load_model(entry)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(0.01)
    zoo.save_weights(moved, micro_workload.weights_path(entry))
    monkeypatch.setattr(search_engine, "joint_retrain", instrumented)
    run_search(micro_workload, tmp_path / "job", SearchConfig(strategy="gemel+", warm_start="mean"), cancel=token)
    unmerged = {e.name: micro_workload.load_model(e).state_dict() for e in micro_workload.queries}
    [start] = starts
    differing = [k for k, v in unmerged["m_a"].items()
                 if v.is_floating_point() and not torch.equal(v, unmerged["m_b"][k])]
    tied = [k for k in differing if torch.equal(start["m_a"][k], start["m_b"][k])]
    # gemel+ on its own starts from the first member's weights; told "mean", from the members' mean.
    assert tied
    assert all(torch.allclose(start["m_a"][k], (unmerged["m_a"][k] + unmerged["m_b"][k]) / 2) for k in tied)
    assert not any(torch.equal(start["m_a"][k], unmerged[name][k]) for name in ("m_a", "m_b") for k in tied)
