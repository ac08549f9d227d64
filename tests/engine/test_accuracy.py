from __future__ import annotations

import numpy as np
import pytest
import torch

from gemel_engine import zoo
from gemel_engine.accuracy import (
    Measurement,
    TargetTest,
    block_bootstrap_interval,
    chance_measurement,
    chance_shortfall,
    lead_over_chance,
    measure,
    measure_predictions,
)
from gemel_engine.errors import GemelError
from gemel_engine.queries import Task
from gemel_engine.train import LabelledFrames

PRESENCE = Task("presence", ("car",))


def _frames(count: int, seed: int) -> LabelledFrames:
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    return LabelledFrames(images, generator.integers(0, 2, size=count).tolist())


def test_measuring_the_same_weights_twice_gives_the_same_figure_whatever_the_batchnorm_state():
    torch.manual_seed(0)
    model = zoo.get_model("resnet18", num_classes=2)
    train, val = _frames(96, 1), _frames(64, 2)
    first = measure(model, val, PRESENCE, calibration=train)
    model.train()
    with torch.no_grad():  # the running statistics drift, as after training steps or another measurement
        model(torch.rand(16, 3, 32, 32) * 5)
    second = measure(model, val, PRESENCE, calibration=train)
    assert first == second
    assert not model.training


def test_the_interval_contains_the_estimate_and_shrinks_with_more_frames():
    generator = np.random.default_rng(3)
    widths = []
    for count in (100, 400, 1600):
        targets = generator.integers(0, 2, size=count).tolist()
        predictions = [t if generator.random() < 0.8 else 1 - t for t in targets]
        measured = measure_predictions(predictions, LabelledFrames(np.zeros((count, 1, 1, 3), np.uint8), targets),
                                       PRESENCE)
        assert measured.low <= measured.accuracy <= measured.high
        assert 0.7 < measured.accuracy < 0.9 and measured.frames == count
        widths.append(measured.high - measured.low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_time_blocks_widen_the_interval_of_correlated_frames():
    # Runs of 20 identical outcomes: frame-level resampling would call this far more certain than it is.
    targets = [1] * 400
    predictions = [1 if (i // 20) % 5 else 0 for i in range(400)]
    low, high = block_bootstrap_interval(predictions, targets, PRESENCE)
    assert high - low > 0.1
    assert block_bootstrap_interval(predictions, targets, PRESENCE) == (low, high)


def test_a_detection_interval_is_measured_on_map():
    from gemel_engine.data.frames import Box

    task = Task("detection", ("car",))
    box = [Box("car", 2, 2, 20, 20)]
    targets = [task.target(box) for _ in range(30)]
    predictions = [
        {"boxes": t["boxes"].clone() + (0 if i % 3 else 15), "labels": t["labels"].clone(),
         "scores": torch.ones(len(t["boxes"]))}
        for i, t in enumerate(targets)
    ]
    low, high = block_bootstrap_interval(predictions, targets, task, resamples=40)
    assert 0.0 <= low <= high <= 1.0


def test_a_measurement_round_trips_through_json_and_refuses_nonsense():
    measured = Measurement(0.8, 0.75, 0.85, 300)
    assert Measurement.from_json(measured.to_json()) == measured
    for bad in ({"accuracy": 0.9, "interval": [0.1, 0.2], "frames": 3}, {"accuracy": "x"}, None,
                {"accuracy": float("nan"), "interval": [0, 1], "frames": 3}):
        with pytest.raises(GemelError):
            Measurement.from_json(bad)


def test_the_chance_baseline_answers_the_training_frames_commonest_class_on_the_frames_it_is_measured_on():
    train_targets = [1] * 70 + [0] * 30  # a model that learned nothing answers 1
    frames = LabelledFrames(np.zeros((200, 8, 8, 3), dtype=np.uint8), [0] * 120 + [1] * 80)
    chance = chance_measurement(train_targets, frames, PRESENCE)
    assert chance is not None and chance.accuracy == pytest.approx(0.4) and chance.frames == 200
    assert chance.low <= chance.accuracy <= chance.high
    detection = Task("detection", ("car",))
    assert chance_measurement(train_targets, frames, detection) is None


def test_the_lead_over_chance_is_paired_so_a_clear_lead_stands_though_the_two_intervals_overlap():
    generator = np.random.default_rng(5)
    # A slowly changing scene: the commonest class holds for long stretches, so per-set intervals are wide.
    targets = np.repeat(generator.integers(0, 2, size=20), 20).tolist()
    frames = LabelledFrames(np.zeros((400, 8, 8, 3), dtype=np.uint8), targets)
    train_targets = [1] * 60 + [0] * 40
    predictions = [t if generator.random() < 0.8 else 1 - t for t in targets]  # right 80% of the time
    model = measure_predictions(predictions, frames, PRESENCE)
    chance = chance_measurement(train_targets, frames, PRESENCE)
    lead = lead_over_chance(predictions, frames, train_targets, PRESENCE)
    assert lead.accuracy == pytest.approx(model.accuracy - chance.accuracy)
    assert lead.low > 0 and chance_shortfall(model, chance, lead, detection=False) is None
    assert lead.high - lead.low < (model.high - model.low) + (chance.high - chance.low)
    copying = [1] * 400  # answers the commonest class: no lead at all
    no_lead = lead_over_chance(copying, frames, train_targets, PRESENCE)
    assert no_lead.accuracy == 0 and no_lead.low == no_lead.high == 0
    sentence = chance_shortfall(measure_predictions(copying, frames, PRESENCE), chance, no_lead, detection=False)
    assert sentence.startswith("its test accuracy ")
    assert sentence.endswith("by 0.000 [0.000, 0.000]: not clearly above 0")
    assert chance_shortfall(model, chance, None, detection=False) is None  # no verdict before the lead is measured
    assert lead_over_chance(predictions, frames, train_targets, Task("detection", ("car",))) is None


def test_a_detector_whose_map_interval_reaches_0_is_no_better_than_one_that_finds_nothing():
    assert "not clearly above 0" in chance_shortfall(Measurement(0.0, 0.0, 0.0, 300), None, None, detection=True)
    assert chance_shortfall(Measurement(0.6, 0.5, 0.7, 300), None, None, detection=True) is None


def test_a_target_met_by_less_than_the_frames_noise_is_met_as_a_point_but_not_at_a_confidence():
    generator = np.random.default_rng(3)
    targets = generator.integers(0, 2, size=400).tolist()
    frames = LabelledFrames(np.zeros((400, 8, 8, 3), dtype=np.uint8), targets)
    unmerged = [t if generator.random() < 0.9 else 1 - t for t in targets]
    merged = list(unmerged)
    for i in [i for i, (p, t) in enumerate(zip(unmerged, targets, strict=True)) if p == t][:8]:
        merged[i] = 1 - merged[i]  # 8 frames (2%) the merged model now gets wrong
    reference_accuracy = sum(p == t for p, t in zip(unmerged, targets, strict=True)) / 400
    required = 0.97 * reference_accuracy
    accuracy, margin = TargetTest(required).judge(merged, frames, PRESENCE)
    assert margin == pytest.approx(accuracy - required) and margin > 0
    paired = TargetTest(required, 0.9, tuple(unmerged), 0.97)
    same_accuracy, lower = paired.judge(merged, frames, PRESENCE)
    assert same_accuracy == accuracy and lower < 0 < margin
    assert TargetTest(required, 0.6, tuple(unmerged), 0.97).judge(merged, frames, PRESENCE)[1] > lower
    # Unpaired (an absolute target), the same frames' noise weighs on the merged accuracy alone: wider still.
    assert TargetTest(required, 0.9).judge(merged, frames, PRESENCE)[1] < lower
    # A merged model that answers as the unmerged one does leads a relative target of 1.0 by exactly 0.
    assert TargetTest(reference_accuracy, 0.9, tuple(unmerged), 1.0).judge(unmerged, frames, PRESENCE)[1] == (
        pytest.approx(0.0))
    with pytest.raises(GemelError):
        TargetTest(required, 1.0)
    with pytest.raises(GemelError):
        TargetTest(required, 0.9, tuple(unmerged))
