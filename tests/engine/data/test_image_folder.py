"""Image folders: natural order, rate and size, and the files that cannot be read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.frames import FrameSizeError
from gemel_engine.errors import SourceError


def _save(path: Path, value: int, size: tuple[int, int] = (40, 30)) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_it_plays_jpg_and_png_files_in_natural_order_at_the_given_rate(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        _save(tmp_path / f"frame{i}.png", i * 10)
    _save(tmp_path / "frame3.JPG", 30)
    (tmp_path / "notes.txt").write_text("skip me")
    src = ImageFolderSource(tmp_path, fps=4.0)
    frames = list(src.frames())
    assert [p.name for p in src.files] == ["frame1.png", "frame2.png", "frame3.JPG", "frame10.png"]
    assert src.resolution == (40, 30)
    assert src.frame_count == 4
    assert [f.timestamp for f in frames] == [0.0, 0.25, 0.5, 0.75]
    assert [int(f.image.mean()) for f in frames] == pytest.approx([10, 20, 30, 100], abs=2)
    assert len(list(src.frames(max_frames=2))) == 2


def test_its_identity_changes_when_an_image_changes(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    before = ImageFolderSource(tmp_path, fps=1).identity()
    _save(tmp_path / "a.png", 1, size=(20, 20))
    assert ImageFolderSource(tmp_path, fps=1).identity() != before


def test_it_refuses_images_of_another_size(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "b.png", 1, size=(20, 20))
    with pytest.raises(SourceError, match=r"b\.png is 20x20"):
        list(ImageFolderSource(tmp_path, fps=1).frames())


def test_it_refuses_an_unreadable_image_naming_it(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    (tmp_path / "b.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(SourceError, match=r"b\.jpg"):
        list(ImageFolderSource(tmp_path, fps=1).frames())


def test_it_refuses_an_empty_or_missing_folder_and_a_bad_rate(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no \.jpg or \.png"):
        ImageFolderSource(tmp_path, fps=1)
    with pytest.raises(SourceError, match="not found"):
        ImageFolderSource(tmp_path / "missing", fps=1)
    _save(tmp_path / "a.png", 1)
    with pytest.raises(SourceError, match="fps"):
        ImageFolderSource(tmp_path, fps=-2)


def test_it_plays_from_a_start_frame_without_reading_the_images_before_it(tmp_path: Path) -> None:
    for i in range(4):
        _save(tmp_path / f"frame{i}.png", 10 * (i + 1))
    src = ImageFolderSource(tmp_path, fps=4.0)
    (tmp_path / "frame0.png").write_bytes(b"not an image")  # never read: it comes before the start
    assert [(f.index, f.timestamp) for f in src.frames_from(2)] == [(2, 0.5), (3, 0.75)]
    assert list(src.frames_from(9)) == []
    with pytest.raises(SourceError, match="start frame"):
        src.frames_from(-1)


def test_images_over_the_frame_size_limit_are_refused_from_their_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path / "1.png", 0, size=(40, 30))
    monkeypatch.setattr("gemel_engine.data.frames.MAX_FRAME_PIXELS", 40 * 30 - 1)
    with pytest.raises(FrameSizeError, match="frames of 40x30 are over the limit"):
        ImageFolderSource(tmp_path, fps=5)
