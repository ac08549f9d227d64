"""Boxes, frames and the camera-source contract."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from gemel_engine.data.frames import MAX_FRAME_PIXELS, Box, CameraSource, Frame, FrameSizeError
from gemel_engine.errors import GemelError, SourceError


def test_a_box_scales_and_round_trips_through_json() -> None:
    box = Box("bus", 10.0, 20.0, 30.0, 60.0)
    assert (box.width, box.height) == (20.0, 40.0)
    assert box.scaled(0.5, 0.25) == Box("bus", 5.0, 5.0, 15.0, 15.0)
    assert Box.from_json(box.to_json()) == box


@pytest.mark.parametrize(
    ("args", "match"), [((5.0, 0.0, 4.0, 1.0), "x2 < x1"), ((0.0, float("nan"), 1.0, 1.0), "non-finite")]
)
def test_a_box_refuses_inverted_or_non_finite_coordinates(args: tuple[float, ...], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        Box("car", *args)


def test_a_box_refuses_a_malformed_json_record() -> None:
    with pytest.raises(SourceError, match="malformed box"):
        Box.from_json({"label": "car", "x1": 0})


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), [1, 2]],
)
def test_a_frame_refuses_anything_but_hxwx3_uint8(image: object) -> None:
    with pytest.raises(SourceError, match="HxWx3 uint8"):
        Frame(index=0, timestamp=0.0, image=image)  # type: ignore[arg-type]


def test_a_frame_over_4k_uhd_is_refused_and_one_at_the_limit_is_not() -> None:
    Frame(index=0, timestamp=0.0, image=np.zeros((2160, 3840, 3), np.uint8))
    with pytest.raises(FrameSizeError, match=f"over the limit of {MAX_FRAME_PIXELS:,} pixels"):
        Frame(index=0, timestamp=0.0, image=np.zeros((2161, 3840, 3), np.uint8))
    assert issubclass(FrameSizeError, SourceError)


def test_source_errors_are_gemel_errors() -> None:
    assert issubclass(SourceError, GemelError)


def test_a_source_closes_when_its_with_block_ends() -> None:
    class Still(CameraSource):
        def __init__(self) -> None:
            self.name, self.fps, self.resolution = "still", 1.0, (2, 2)
            self.closed = False

        def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
            yield Frame(0, 0.0, np.zeros((2, 2, 3), np.uint8))

        def close(self) -> None:
            self.closed = True

    with Still() as src:
        assert [f.index for f in src.frames()] == [0]
        assert src.frame_count is None
        assert src.identity() is None
        assert repr(src) == "Still(name='still', fps=1, resolution=2x2)"
    assert src.closed
