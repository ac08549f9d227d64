"""Network streams: timeouts against silent and closed loopback ports, reading, reconnecting, back-off."""

from __future__ import annotations

import itertools
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from gemel_engine.data.frames import FrameSizeError
from gemel_engine.data.stream import Backoff, StreamSource, redact_url
from gemel_engine.data.video import write_video
from gemel_engine.errors import SourceError

# A connect timeout no loaded machine comes near when a port refuses at once.
LONG_TIMEOUT_S = 120.0


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_it_gives_up_on_a_host_that_never_answers_within_the_timeout(
    silent_listener: int, scheme: str
) -> None:
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"no answer from .*127\.0\.0\.1.* within 0\.5s"):
        StreamSource(f"{scheme}://127.0.0.1:{silent_listener}/live", connect_timeout=0.5, read_timeout=0.5)
    assert time.monotonic() - start >= 0.9 * 0.5, "it gave up before its timeout"


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_it_reports_a_closed_port_at_once(closed_port: int, scheme: str) -> None:
    # "At once" means without waiting for the connect timeout: a long one would show even on a loaded machine.
    start = time.monotonic()
    with pytest.raises(SourceError, match="refused"):
        StreamSource(f"{scheme}://127.0.0.1:{closed_port}/live", connect_timeout=LONG_TIMEOUT_S)
    assert time.monotonic() - start < LONG_TIMEOUT_S / 2, "it waited for the connect timeout"


@pytest.fixture
def served_clip(http_server: tuple[Path, ThreadingHTTPServer]) -> tuple[str, ThreadingHTTPServer]:
    root, server = http_server
    images = [np.full((48, 64, 3), 10 * i, dtype=np.uint8) for i in range(10)]
    write_video(images, root / "cam.mkv", fps=10, codec="h264")
    return f"http://127.0.0.1:{server.server_address[1]}/cam.mkv", server


def test_it_reads_a_stream_served_over_http(served_clip: tuple[str, ThreadingHTTPServer]) -> None:
    url, _ = served_clip
    with StreamSource(url, connect_timeout=2.0, read_timeout=2.0, live=False) as src:
        assert src.fps == pytest.approx(10.0)
        assert src.resolution == (64, 48)
        assert src.identity() is None
        frames = list(src.frames())
    assert len(frames) == 10
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(10)])
    assert abs(float(frames[5].image.mean()) - 50.0) < 4.0


def test_a_stream_over_the_frame_size_limit_is_refused_when_it_connects(
    served_clip: tuple[str, ThreadingHTTPServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = served_clip
    monkeypatch.setattr("gemel_engine.data.frames.MAX_FRAME_PIXELS", 64 * 48 - 1)
    with pytest.raises(FrameSizeError, match="frames of 64x48 are over the limit"):
        StreamSource(url, connect_timeout=LONG_TIMEOUT_S, read_timeout=LONG_TIMEOUT_S, live=False)


def test_it_reconnects_when_a_live_stream_drops_and_keeps_counting(
    served_clip: tuple[str, ThreadingHTTPServer],
) -> None:
    url, _ = served_clip
    waits: list[float] = []
    src = StreamSource(
        url, connect_timeout=2.0, backoff=Backoff(initial=0.01, attempts=3), sleep=waits.append
    )
    frames = list(src.frames(max_frames=25))
    assert [f.index for f in frames] == list(range(25))
    stamps = [f.timestamp for f in frames]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert src.reconnects == 2
    assert waits == [0.01, 0.01]


def test_it_gives_up_after_the_bounded_back_off(served_clip: tuple[str, ThreadingHTTPServer]) -> None:
    url, server = served_clip
    waits: list[float] = []
    backoff = Backoff(initial=0.05, factor=2.0, max_delay=0.15, attempts=4)
    src = StreamSource(url, connect_timeout=1.0, backoff=backoff, sleep=waits.append)
    server.shutdown()
    server.server_close()
    with pytest.raises(SourceError, match="after 4 reconnect attempts"):
        list(src.frames(max_frames=50))
    assert waits == [0.05, 0.1, 0.15, 0.15]


def test_it_never_shows_credentials_in_names_or_errors(closed_port: int) -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{closed_port}/live"
    with pytest.raises(SourceError) as err:
        StreamSource(url, connect_timeout=1.0)
    assert "s3cret" not in str(err.value)
    assert "admin" not in str(err.value)
    assert redact_url(url) == f"rtsp://***@127.0.0.1:{closed_port}/live"
    assert redact_url("http://cam.local/x") == "http://cam.local/x"


def test_back_off_doubles_up_to_its_ceiling() -> None:
    assert Backoff(initial=0.5, factor=2.0, max_delay=4.0, attempts=6).delays() == [
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
        4.0,
    ]
    assert Backoff(attempts=0).delays() == []


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1.0}, {"factor": 0.5}, {"max_delay": float("inf")}, {"attempts": -1}, {"attempts": 2.5}],
)
def test_back_off_refuses_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(SourceError, match="back-off"):
        Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("ftp://127.0.0.1/x", {}, "must start with"),
        ("http:///nohost", {}, "no host"),
        ("http://127.0.0.1:99999/x", {}, "malformed"),
        ("http://127.0.0.1/x", {"connect_timeout": 0}, "connect_timeout"),
        ("http://127.0.0.1/x", {"read_timeout": float("nan")}, "read_timeout"),
        ("http://127.0.0.1/x\n", {}, "one-line"),
    ],
)
def test_it_refuses_bad_urls_and_timeouts(url: str, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        StreamSource(url, **kwargs)  # type: ignore[arg-type]
