"""Video files: decoding through PyAV (OpenCV as fallback), reported rate and size, bad files, the writer."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from gemel_engine.data.frames import FrameSizeError
from gemel_engine.data.video import VideoFileSource, write_video
from gemel_engine.errors import SourceError
from tests.engine.data.support import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE


def _close_to(decoded: np.ndarray, original: np.ndarray) -> bool:
    return float(np.abs(decoded.astype(np.int16) - original.astype(np.int16)).mean()) < 8.0


def test_it_decodes_every_frame_of_an_mp4(videos: dict[str, Path], clip: list[np.ndarray]) -> None:
    with VideoFileSource(videos["mp4-h264"]) as src:
        frames = list(src.frames())
        assert src.backend == "pyav"
        assert src.fps == pytest.approx(CLIP_FPS)
        assert src.resolution == CLIP_SIZE
        assert src.frame_count == CLIP_FRAMES
    assert len(frames) == CLIP_FRAMES
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    assert all(f.boxes is None for f in frames)
    for frame, original in zip(frames, clip, strict=True):
        assert frame.image.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
        assert _close_to(frame.image, original)


@pytest.mark.parametrize("kind", ["mp4-mpeg4", "avi-mjpeg", "mkv-h264"])
def test_it_decodes_mpeg4_mjpeg_and_mkv_files_with_their_frame_count_and_rate(
    videos: dict[str, Path], clip: list[np.ndarray], kind: str
) -> None:
    src = VideoFileSource(videos[kind])
    frames = list(src.frames())
    assert len(frames) == CLIP_FRAMES
    assert src.frame_count == CLIP_FRAMES
    assert src.fps == pytest.approx(CLIP_FPS)
    assert src.resolution == CLIP_SIZE
    assert _close_to(frames[-1].image, clip[-1])


def test_it_stamps_frames_with_stream_timestamps(videos: dict[str, Path]) -> None:
    frames = list(VideoFileSource(videos["avi-mjpeg"]).frames())
    assert [f.timestamp for f in frames] == pytest.approx([i / CLIP_FPS for i in range(CLIP_FRAMES)])


def test_it_starts_again_from_the_first_frame_and_honours_max_frames(videos: dict[str, Path]) -> None:
    src = VideoFileSource(videos["mp4-h264"])
    first = list(src.frames(max_frames=3))
    again = list(src.frames(max_frames=3))
    assert [f.index for f in first] == [0, 1, 2]
    assert np.array_equal(first[0].image, again[0].image)
    assert list(src.frames(max_frames=0)) == []


def test_it_falls_back_to_opencv_when_pyav_cannot_decode(
    videos: dict[str, Path], clip: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: VideoFileSource, fps: float | None) -> None:
        raise SourceError(f"cannot decode video {self.path}: no decoder")

    monkeypatch.setattr(VideoFileSource, "_probe_pyav", refuse)
    src = VideoFileSource(videos["avi-mjpeg"])
    frames = list(src.frames())
    assert src.backend == "opencv"
    assert src.fps == pytest.approx(CLIP_FPS)
    assert src.resolution == CLIP_SIZE
    assert len(frames) == CLIP_FRAMES
    assert frames[2].timestamp == pytest.approx(2 / CLIP_FPS)
    assert _close_to(frames[5].image, clip[5])


def test_opencv_and_pyav_decode_the_same_pixels(videos: dict[str, Path]) -> None:
    via_av = list(VideoFileSource(videos["mp4-h264"], backend="pyav").frames())
    via_cv = list(VideoFileSource(videos["mp4-h264"], backend="opencv").frames())
    assert len(via_av) == len(via_cv)
    assert _close_to(via_cv[4].image, via_av[4].image)


def test_it_reports_identity_that_changes_with_the_file(tmp_path: Path, clip: list[np.ndarray]) -> None:
    path = tmp_path / "v.avi"
    write_video(clip, path, fps=10, codec="mjpeg")
    before = VideoFileSource(path).identity()
    write_video(clip[:6], path, fps=10, codec="mjpeg")
    after = VideoFileSource(path).identity()
    assert before["path"] == after["path"]
    assert before != after


def test_it_refuses_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is a shopping list, not a video\n" * 20)
    with pytest.raises(SourceError, match=r"notes\.mp4"):
        VideoFileSource(path)


def test_it_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(SourceError, match="empty"):
        VideoFileSource(path)


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt"), [("avi", "mjpeg", "yuvj420p"), ("mkv", "libx264", "yuv420p")]
)
def test_it_refuses_a_video_without_frames(tmp_path: Path, suffix: str, codec: str, pix_fmt: str) -> None:
    path = tmp_path / f"zero.{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        container.start_encoding()
    assert path.stat().st_size > 0
    with pytest.raises(SourceError, match=f"zero.{suffix}"):
        VideoFileSource(path)


def test_it_refuses_a_missing_file_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        VideoFileSource(tmp_path / "nope.mp4")
    with pytest.raises(SourceError, match="not a regular file"):
        VideoFileSource(tmp_path)


def test_it_refuses_an_unknown_backend(videos: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match="backend"):
        VideoFileSource(videos["mp4-h264"], backend="gstreamer")


def test_the_writer_returns_the_frame_count_and_leaves_no_partial_file(
    tmp_path: Path, clip: list[np.ndarray]
) -> None:
    assert write_video(iter(clip[:5]), tmp_path / "ok.mkv", fps=25, codec="mjpeg") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mkv"]

    def frames_then_bad() -> object:
        yield clip[0]
        yield np.zeros((10, 10, 3), dtype=np.uint8)

    with pytest.raises(SourceError, match="earlier frames are 64x48"):
        write_video(frames_then_bad(), tmp_path / "bad.mp4", fps=25)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mkv"]


@pytest.mark.parametrize(
    ("frames", "name", "kwargs", "match"),
    [
        ([], "a.mp4", {}, "no frames"),
        ([np.zeros((9, 10, 3), np.uint8)], "a.mp4", {}, "even"),
        ([np.zeros((8, 8), np.uint8)], "a.mp4", {}, "HxWx3 uint8"),
        ([np.zeros((8, 8, 3), np.float32)], "a.mp4", {}, "HxWx3 uint8"),
        ([np.zeros((8, 8, 3), np.uint8)], "a.webm", {}, "container"),
        ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", {"codec": "vp9"}, "codec"),
        ([np.zeros((8, 8, 3), np.uint8)], "a.mp4", {"fps": 0}, "fps"),
    ],
)
def test_the_writer_refuses_bad_input(
    tmp_path: Path, frames: list[np.ndarray], name: str, kwargs: dict[str, object], match: str
) -> None:
    params: dict[str, object] = {"fps": 10}
    params.update(kwargs)
    with pytest.raises(SourceError, match=match):
        write_video(frames, tmp_path / name, **params)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_it_plays_from_a_start_frame(videos: dict[str, Path]) -> None:
    src = VideoFileSource(videos["mp4-h264"])
    everything = list(src.frames())
    later = list(src.frames_from(3))
    assert [f.index for f in later] == [f.index for f in everything[3:]]
    assert np.array_equal(later[0].image, everything[3].image)
    with pytest.raises(SourceError, match="start frame"):
        src.frames_from(True)


@pytest.mark.parametrize("backend", ["auto", "pyav", "opencv"])
def test_a_video_over_the_frame_size_limit_is_refused_when_opened(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setattr("gemel_engine.data.frames.MAX_FRAME_PIXELS", CLIP_SIZE[0] * CLIP_SIZE[1] - 1)
    with pytest.raises(FrameSizeError, match=f"frames of {CLIP_SIZE[0]}x{CLIP_SIZE[1]} are over the limit"):
        VideoFileSource(videos["avi-mjpeg"], backend=backend)
