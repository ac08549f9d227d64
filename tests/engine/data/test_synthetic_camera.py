"""The synthetic street camera: deterministic per seed, truthful boxes, distinct cameras, fast."""

from __future__ import annotations

import numpy as np
import pytest

from gemel_engine.data.frames import FrameSizeError
from gemel_engine.data.synthetic import CLASSES, SceneConfig, SyntheticCamera
from gemel_engine.errors import SourceError


def _camera(seed: int, **kwargs: object) -> SyntheticCamera:
    params: dict[str, object] = {"seed": seed, "width": 160, "height": 120, "num_frames": 120}
    params.update(kwargs)
    return SyntheticCamera(SceneConfig(**params))  # type: ignore[arg-type]


def test_it_renders_bit_identical_frames_for_the_same_seed_and_config() -> None:
    a = list(_camera(7).frames(60))
    b = list(_camera(7).frames(60))
    assert len(a) == len(b) == 60
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.image, fb.image)
        assert fa.boxes == fb.boxes
        assert fa.timestamp == fb.timestamp


def test_it_renders_any_frame_on_its_own_exactly_as_in_sequence() -> None:
    cam = _camera(3)
    sequential = list(cam.frames(50))
    fresh = _camera(3)
    for index in (49, 0, 17):
        frame = fresh.render(index)
        assert np.array_equal(frame.image, sequential[index].image)
        assert frame.boxes == sequential[index].boxes


def test_it_gives_each_seed_its_own_camera() -> None:
    first = _camera(1).render(10).image
    for seed in (2, 3, 4):
        assert not np.array_equal(first, _camera(seed).render(10).image)


def test_it_yields_frames_with_the_configured_size_rate_and_count() -> None:
    cam = SyntheticCamera(SceneConfig(seed=0, width=64, height=48, fps=10.0, num_frames=25))
    frames = list(cam.frames())
    assert cam.resolution == (64, 48)
    assert cam.fps == 10.0
    assert cam.frame_count == 25
    assert len(frames) == 25
    assert [f.index for f in frames] == list(range(25))
    assert frames[10].timestamp == pytest.approx(1.0)
    assert frames[0].image.shape == (48, 64, 3)
    assert frames[0].image.dtype == np.uint8
    assert len(list(cam.frames(max_frames=5))) == 5


def test_it_keeps_every_box_inside_the_frame_with_a_known_class() -> None:
    seen = set()
    for seed in range(6):
        cam = _camera(seed, density=10.0)
        for frame in cam.frames(120):
            assert frame.boxes is not None
            for box in frame.boxes:
                assert box.label in CLASSES
                assert 0 <= box.x1 < box.x2 <= 160
                assert 0 <= box.y1 < box.y2 <= 120
                seen.add(box.label)
    assert len(seen) >= 4


def test_it_draws_objects_only_inside_their_boxes_and_each_box_holds_object_pixels() -> None:
    boxes_checked = 0
    for seed in range(5):
        cam = _camera(seed, density=10.0, min_box_pixels=1)
        for index in range(0, 120, 7):
            frame = cam.render(index)
            changed = np.any(frame.image != cam.background(index), axis=2)
            covered = np.zeros_like(changed)
            for box in frame.boxes or ():
                x1, y1, x2, y2 = int(box.x1), int(box.y1), int(box.x2), int(box.y2)
                assert changed[y1:y2, x1:x2].any(), (
                    f"seed {seed} frame {index}: box {box} shows only background"
                )
                covered[y1:y2, x1:x2] = True
                boxes_checked += 1
            assert not (changed & ~covered).any(), (
                f"seed {seed} frame {index}: object pixels outside every box"
            )
    assert boxes_checked > 50


def test_it_gives_a_tight_box_around_the_visible_pixels() -> None:
    cam = _camera(11, density=8.0)
    tight = 0
    for index in range(0, 120, 5):
        frame = cam.render(index)
        changed = np.any(frame.image != cam.background(index), axis=2)
        for box in frame.boxes or ():
            x1, y1, x2, y2 = int(box.x1), int(box.y1), int(box.x2), int(box.y2)
            inside = changed[y1:y2, x1:x2]
            tight += bool(inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any())
    assert tight > 0


def test_it_gives_no_box_to_objects_hidden_behind_nearer_ones() -> None:
    from gemel_engine.data.synthetic import _place

    hidden = 0
    for seed in range(6):
        cam = _camera(seed, density=24.0, min_box_pixels=1)
        for index in range(0, 120, 2):
            t = index / cam.fps
            window = int(t // 60)
            active = [o for w in (window - 1, window) for o in cam._objects_for_window(w) if o.t0 <= t < o.t1]
            placed = [p for o in active if (p := _place(cam._layout, o, t, cam.resolution)) is not None]
            width, height = cam.resolution
            on_screen = [
                p
                for p in placed
                if (min(p.x2, width) - max(p.x1, 0)) >= 6 and (min(p.y2, height) - max(p.y1, 0)) >= 6
            ]
            boxes = cam.render(index).boxes or ()
            assert len(boxes) <= len(placed)
            hidden += len(on_screen) > len(boxes)
    assert hidden > 0
    empty = _camera(9, density=0.0)
    assert all(f.boxes == () for f in empty.frames(20))


def test_it_only_shows_the_configured_classes() -> None:
    cam = _camera(4, classes=("person",), density=12.0)
    labels = {b.label for f in cam.frames(120) for b in f.boxes or ()}
    assert labels == {"person"}


def test_it_drifts_the_lighting_across_the_clip() -> None:
    cam = _camera(2, noise=0.0, time_scale=480.0, start_hour=12.0, num_frames=900)
    noon = cam.background(0).astype(float).mean()
    evening = cam.background(899).astype(float).mean()
    assert cam.hour_at(899) == pytest.approx(12.0 + 899 / 15.0 * 480.0 / 3600.0)
    assert evening < noon * 0.6
    frozen = _camera(2, noise=0.0, time_scale=0.0)
    assert np.array_equal(frozen.background(0), frozen.background(100))


def test_it_makes_cameras_that_differ_in_colour_layout_and_object_scale() -> None:
    means = []
    heights = []
    for seed in range(8):
        cam = _camera(seed, density=10.0, start_hour=12.0, time_scale=0.0)
        frames = list(cam.frames(120))
        means.append(np.mean([f.image.reshape(-1, 3).mean(axis=0) for f in frames], axis=0))
        box_heights = [b.height for f in frames for b in f.boxes or ()]
        if box_heights:
            heights.append(float(np.median(box_heights)))
    means_arr = np.array(means)
    pairwise = np.linalg.norm(means_arr[:, None] - means_arr[None, :], axis=2)
    assert pairwise[np.triu_indices(8, 1)].min() > 2.0
    assert max(heights) > 2.0 * min(heights)


def test_it_tells_cameras_apart_from_a_single_frame() -> None:
    cams = [_camera(seed, width=64, height=48) for seed in (20, 21, 22)]
    thumbs = [np.array([f.image[::4, ::4].astype(np.float32).ravel() for f in c.frames(120)]) for c in cams]
    centroids = np.array([t[:60].mean(axis=0) for t in thumbs])
    correct = 0
    for label, t in enumerate(thumbs):
        d = np.linalg.norm(t[60:, None, :] - centroids[None], axis=2)
        correct += int((d.argmin(axis=1) == label).sum())
    assert correct / 180 > 0.95


def test_an_endless_camera_keeps_going_until_max_frames() -> None:
    cam = SyntheticCamera(SceneConfig(seed=1, width=32, height=32, num_frames=None))
    assert cam.frame_count is None
    frames = list(cam.frames(max_frames=40))
    assert len(frames) == 40
    assert cam.render(10_000).index == 10_000


@pytest.mark.parametrize(
    "field",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"width": 8},
        {"height": 5000},
        {"fps": 0},
        {"fps": float("nan")},
        {"num_frames": 0},
        {"classes": ("dog",)},
        {"classes": ()},
        {"classes": "car"},
        {"density": -1.0},
        {"noise": 11.0},
        {"start_hour": 25.0},
        {"min_box_pixels": 0},
    ],
)
def test_it_refuses_a_bad_scene_config(field: dict[str, object]) -> None:
    with pytest.raises(SourceError, match=next(iter(field))):
        SceneConfig(**field)  # type: ignore[arg-type]


@pytest.mark.parametrize(("width", "height"), [(4096, 4096), (4096, 2048)])
def test_a_scene_over_4k_uhd_pixels_is_refused_before_anything_is_rendered(width: int, height: int) -> None:
    with pytest.raises(FrameSizeError, match=f"{width}x{height} are over the limit"):
        SceneConfig(width=width, height=height)


def test_it_refuses_frame_indices_outside_the_clip() -> None:
    cam = _camera(0, num_frames=10)
    with pytest.raises(SourceError, match="outside"):
        cam.render(10)
    with pytest.raises(SourceError, match="max_frames"):
        list(cam.frames(max_frames=-1))


def test_it_plays_from_a_start_frame_exactly_as_in_sequence() -> None:
    sequential = list(_camera(3).frames())
    later = list(_camera(3).frames_from(115))
    assert [f.index for f in later] == [115, 116, 117, 118, 119]
    assert all(np.array_equal(f.image, sequential[f.index].image) and f.boxes == sequential[f.index].boxes
               for f in later)
    with pytest.raises(SourceError, match="start frame"):
        _camera(3).frames_from(-2)
