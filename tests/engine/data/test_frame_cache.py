"""The on-disk frame cache: hits skip decoding, changes rebuild, failed writes lose nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gemel_engine.data import sampling
from gemel_engine.data.sampling import FrameCache, SamplingSpec
from gemel_engine.data.synthetic import SceneConfig, SyntheticCamera
from gemel_engine.data.video import VideoFileSource, write_video
from gemel_engine.errors import SourceError
from tests.engine.data.support import CountingSource


def _video(tmp_path: Path, clip: list[np.ndarray], frames: int = 12) -> Path:
    path = tmp_path / "cam.avi"
    write_video(clip[:frames], path, fps=10, codec="mjpeg")
    return path


def test_a_cache_hit_does_not_decode_again(tmp_path: Path, clip: list[np.ndarray]) -> None:
    path = _video(tmp_path, clip)
    cache = FrameCache(tmp_path / "cache")
    spec = SamplingSpec(every=2, size=(32, 24))
    source = CountingSource(VideoFileSource(path))
    first = cache.get(source, spec)
    second = cache.get(source, spec)
    again = FrameCache(tmp_path / "cache").get(CountingSource(VideoFileSource(path)), spec)
    assert source.reads == 1
    assert (cache.misses, cache.hits) == (1, 1)
    for other in (second, again):
        assert np.array_equal(other.images, first.images)
        assert np.array_equal(other.timestamps, first.timestamps)
        assert np.array_equal(other.indices, first.indices)
        assert other.boxes == first.boxes
    assert first.images.shape == (6, 24, 32, 3)


def test_it_keeps_ground_truth_boxes(tmp_path: Path) -> None:
    cam = SyntheticCamera(SceneConfig(seed=4, width=96, height=64, num_frames=30, density=10.0))
    cache = FrameCache(tmp_path)
    stored = cache.get(cam, SamplingSpec(every=3))
    loaded = cache.get(CountingSource(cam), SamplingSpec(every=3))
    assert cache.hits == 1
    assert any(loaded.boxes)
    assert loaded.boxes == stored.boxes


def test_it_samples_again_when_the_parameters_change(tmp_path: Path, clip: list[np.ndarray]) -> None:
    source = CountingSource(VideoFileSource(_video(tmp_path, clip)))
    cache = FrameCache(tmp_path / "cache")
    cache.get(source, SamplingSpec(every=2))
    cache.get(source, SamplingSpec(every=3))
    cache.get(source, SamplingSpec(every=2, size=(16, 16)))
    cache.get(source, SamplingSpec(every=2))
    assert source.reads == 3
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_it_samples_again_when_the_file_changes_and_drops_the_stale_entry(
    tmp_path: Path, clip: list[np.ndarray]
) -> None:
    path = _video(tmp_path, clip)
    cache = FrameCache(tmp_path / "cache")
    spec = SamplingSpec()
    assert len(cache.get(VideoFileSource(path), spec)) == 12
    _video(tmp_path, clip, frames=8)
    source = CountingSource(VideoFileSource(path))
    assert len(cache.get(source, spec)) == 8
    assert source.reads == 1
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = CountingSource(VideoFileSource(path))
    cache.get(touched, spec)
    assert touched.reads == 1


def test_a_failed_write_keeps_what_was_cached(
    tmp_path: Path, clip: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = CountingSource(VideoFileSource(_video(tmp_path, clip)))
    root = tmp_path / "cache"
    cache = FrameCache(root)
    kept = cache.get(source, SamplingSpec(every=2))
    before = sorted(p.name for p in root.iterdir())

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sampling.np, "savez", disk_full)
    with pytest.raises(SourceError, match="No space left"):
        cache.get(source, SamplingSpec(every=3))
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == before
    reloaded = FrameCache(root).get(source, SamplingSpec(every=2))
    assert source.reads == 2
    assert np.array_equal(reloaded.images, kept.images)


def test_a_corrupt_entry_is_rebuilt(tmp_path: Path, clip: list[np.ndarray]) -> None:
    source = CountingSource(VideoFileSource(_video(tmp_path, clip)))
    cache = FrameCache(tmp_path / "cache")
    good = cache.get(source)
    (npz,) = (tmp_path / "cache").glob("*.npz")
    npz.write_bytes(b"garbage")
    rebuilt = cache.get(source)
    assert source.reads == 2
    assert np.array_equal(rebuilt.images, good.images)
    assert cache.get(source) is not None
    assert source.reads == 2


def test_sources_without_identity_are_never_cached(tmp_path: Path) -> None:
    class Live(CountingSource):
        def identity(self) -> None:
            return None

    cam = Live(SyntheticCamera(SceneConfig(seed=1, width=32, height=32, num_frames=5)))
    cache = FrameCache(tmp_path)
    cache.get(cam)
    cache.get(cam)
    assert cam.reads == 2
    assert not list(tmp_path.iterdir())


def test_clear_removes_every_entry(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    cam = SyntheticCamera(SceneConfig(seed=1, width=32, height=32, num_frames=5))
    cache.get(cam, SamplingSpec(every=1))
    cache.get(cam, SamplingSpec(every=2))
    assert cache.clear() == 2
    assert not list(tmp_path.iterdir())


def test_it_refuses_a_cache_root_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SourceError, match="cannot create frame cache folder"):
        FrameCache(blocker / "cache")
