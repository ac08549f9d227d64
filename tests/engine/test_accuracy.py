from __future__ import annotations

import numpy as np
import pytest
import torch

from gemel_engine import zoo
from gemel_engine.accuracy import Measurement, block_bootstrap_interval, measure, measure_predictions
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
