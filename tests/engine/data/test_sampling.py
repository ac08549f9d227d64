"""Sampling frames, resizing with boxes, and splitting by time without leakage."""

from __future__ import annotations

import numpy as np
import pytest

from gemel_engine.data.frames import Box
from gemel_engine.data.sampling import FrameSet, SamplingSpec, resize_frame, sample_frames, split_by_time
from gemel_engine.data.synthetic import SceneConfig, SyntheticCamera
from gemel_engine.errors import SourceError


def _camera(num_frames: int | None = 40, **kwargs: object) -> SyntheticCamera:
    params: dict[str, object] = {"seed": 8, "width": 96, "height": 64, "fps": 10.0, "num_frames": num_frames}
    params.update(kwargs)
    return SyntheticCamera(SceneConfig(**params))  # type: ignore[arg-type]


def test_it_keeps_every_kth_frame() -> None:
    frames = sample_frames(_camera(), SamplingSpec(every=7))
    assert frames.indices.tolist() == [0, 7, 14, 21, 28, 35]
    assert frames.timestamps.tolist() == pytest.approx([0.0, 0.7, 1.4, 2.1, 2.8, 3.5])
    assert frames.images.shape == (6, 64, 96, 3)
    assert frames.images.dtype == np.uint8
    assert len(frames.boxes) == 6


def test_it_spreads_a_fixed_count_evenly_from_first_to_last_frame() -> None:
    frames = sample_frames(_camera(), SamplingSpec(count=5))
    assert frames.indices.tolist() == [0, 10, 20, 29, 39]
    assert len(sample_frames(_camera(num_frames=3), SamplingSpec(count=10))) == 3


def test_it_needs_a_bound_to_spread_frames_over_an_endless_source() -> None:
    with pytest.raises(SourceError, match="unknown length"):
        sample_frames(_camera(num_frames=None), SamplingSpec(count=4))
    frames = sample_frames(_camera(num_frames=None), SamplingSpec(count=4, max_frames=31))
    assert frames.indices.tolist() == [0, 10, 20, 30]


def test_it_returns_the_same_pixels_and_boxes_as_the_source() -> None:
    cam = _camera()
    frames = sample_frames(cam, SamplingSpec(every=5))
    direct = cam.render(15)
    assert np.array_equal(frames.images[3], direct.image)
    assert frames.boxes[3] == direct.boxes


def test_it_resizes_frames_and_scales_their_boxes() -> None:
    cam = _camera(density=12.0)
    full = sample_frames(cam, SamplingSpec(every=4))
    small = sample_frames(cam, SamplingSpec(every=4, size=(48, 16)))
    assert small.images.shape == (10, 16, 48, 3)
    assert small.resolution == (48, 16)
    pairs = [
        (a, b) for fa, fb in zip(full.boxes, small.boxes, strict=True) for a, b in zip(fa, fb, strict=True)
    ]
    assert pairs
    for big, tiny in pairs:
        assert tiny.label == big.label
        assert (tiny.x1, tiny.x2) == pytest.approx((big.x1 / 2, big.x2 / 2))
        assert (tiny.y1, tiny.y2) == pytest.approx((big.y1 / 4, big.y2 / 4))


def test_resizing_keeps_a_frame_that_already_has_the_size() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    assert resize_frame(image, None, (6, 4))[0] is image
    enlarged, boxes = resize_frame(image, (Box("car", 1, 1, 2, 2),), (12, 8))
    assert enlarged.shape == (8, 12, 3)
    assert boxes == (Box("car", 2, 2, 4, 4),)
    with pytest.raises(SourceError, match="size"):
        resize_frame(image, None, (0, 4))


def test_train_val_and_test_never_overlap_and_keep_their_gaps() -> None:
    frames = sample_frames(_camera(num_frames=100))
    for gap in (0.0, 0.35, 1.0, 2.5):
        for val_fraction, test_fraction in ((0.1, 0.1), (0.25, 0.2), (0.3, 0.3)):
            if gap > val_fraction * 10 + 1e-9:  # the gap would swallow every validation frame
                with pytest.raises(SourceError, match="no validation frame"):
                    split_by_time(frames, val_fraction=val_fraction, test_fraction=test_fraction, gap=gap)
                continue
            train, val, test = split_by_time(frames, val_fraction=val_fraction, test_fraction=test_fraction, gap=gap)
            assert len(train) > 0 and len(val) > 0
            assert len(test) >= round(test_fraction * 100)
            assert len(val) >= round(val_fraction * 100) - round(gap * 10) - 1
            assert val.timestamps.min() >= train.timestamps.max() + gap - 1e-9
            assert test.timestamps.min() >= val.timestamps.max() + gap - 1e-9
            sets = [set(part.indices.tolist()) for part in (train, val, test)]
            assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
            assert len(train) + len(val) + len(test) + 2 * round(gap * 10) >= 98


def test_the_split_sorts_by_time_whatever_the_input_order() -> None:
    frames = sample_frames(_camera(num_frames=30))
    shuffled = frames.select(np.random.default_rng(0).permutation(30))
    train, val, test = split_by_time(shuffled, val_fraction=0.2, test_fraction=0.2, gap=0.5)
    assert test.indices.tolist() == list(range(24, 30))
    assert val.indices.tolist() == list(range(18, 20))
    assert train.indices.tolist() == list(range(0, 14))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave frames to train"),
        ({"gap": -1.0}, "gap"),
        ({"gap": 100.0}, "no training frame|no validation frame"),
    ],
)
def test_the_split_refuses_impossible_requests(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        split_by_time(sample_frames(_camera(num_frames=20)), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 2, "count": 3}, "not both"),
        ({"every": 0}, "every"),
        ({"count": -1}, "count"),
        ({"max_frames": True}, "max_frames"),
        ({"size": (10,)}, "size"),
        ({"size": (0, 10)}, "size"),
    ],
)
def test_a_sampling_spec_refuses_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        SamplingSpec(**kwargs)  # type: ignore[arg-type]


def test_a_frame_set_refuses_mismatched_parts() -> None:
    with pytest.raises(SourceError, match="2 images, 1 timestamps"):
        FrameSet(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(1), np.zeros(2), (None, None))
    with pytest.raises(SourceError, match="uint8"):
        FrameSet(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), np.zeros(2), (None, None))
