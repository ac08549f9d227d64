"""open_source: one URI opens any camera, and unsafe or unknown URIs are refused."""

from __future__ import annotations

import os
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemel_engine.data.folder import ImageFolderSource
from gemel_engine.data.sources import open_source
from gemel_engine.data.stream import StreamSource
from gemel_engine.data.synthetic import SyntheticCamera
from gemel_engine.data.video import VideoFileSource
from gemel_engine.errors import SourceError


def test_it_opens_a_synthetic_camera_from_its_uri() -> None:
    with open_source("synthetic://lobby?seed=3&width=64&height=48&fps=10&frames=20&classes=car,bus") as cam:
        assert isinstance(cam, SyntheticCamera)
        assert cam.name == "lobby"
        assert cam.config.seed == 3
        assert cam.resolution == (64, 48)
        assert cam.fps == 10.0
        assert cam.frame_count == 20
        assert cam.config.classes == ("car", "bus")
        assert len(list(cam.frames())) == 20


def test_a_synthetic_name_without_seed_always_opens_the_same_camera() -> None:
    a = open_source("synthetic://gate-4?width=32&height=32")
    b = open_source("synthetic://gate-4?width=32&height=32")
    c = open_source("synthetic://gate-5?width=32&height=32")
    assert isinstance(a, SyntheticCamera)
    assert isinstance(c, SyntheticCamera)
    assert np.array_equal(a.render(5).image, b.render(5).image)
    assert a.config.seed != c.config.seed
    assert open_source("synthetic://x?frames=0&width=32&height=32").frame_count is None
    assert open_source("synthetic://x?width=32&height=32", fps=5.0).fps == 5.0
    assert open_source("synthetic://x?width=32&height=32&fps=8", fps=5.0).fps == 8.0


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("synthetic://?seed=1", "needs a name"),
        ("synthetic://a?colour=red", "unknown parameter 'colour'"),
        ("synthetic://a?seed=1&seed=2", "given twice"),
        ("synthetic://a?width=wide", "not a valid int"),
        ("synthetic://a?width=4", "width"),
        ("synthetic://a?classes=car,dragon", "dragon"),
    ],
)
def test_it_refuses_a_bad_synthetic_uri(uri: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        open_source(uri)


def test_it_opens_video_files_by_path_and_file_uri(videos: dict[str, Path]) -> None:
    path = videos["mp4-h264"]
    assert isinstance(open_source(str(path)), VideoFileSource)
    assert isinstance(open_source(path.as_uri()), VideoFileSource)
    assert isinstance(open_source(f"file://localhost{path}"), VideoFileSource)


def test_it_opens_an_image_folder_with_a_rate(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    src = open_source(str(tmp_path), fps=2.0)
    assert isinstance(src, ImageFolderSource)
    assert src.fps == 2.0
    with pytest.raises(SourceError, match="needs a frame rate"):
        open_source(str(tmp_path))


def test_it_takes_relative_paths_under_the_media_root(videos: dict[str, Path]) -> None:
    path = videos["avi-mjpeg"]
    src = open_source(path.name, media_root=path.parent)
    assert isinstance(src, VideoFileSource)
    assert src.path == path.resolve()


@pytest.mark.parametrize("escape", ["../outside.mp4", "{outside}", "sub/../../outside.mp4"])
def test_it_refuses_paths_outside_the_media_root(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    with pytest.raises(SourceError, match="outside the media root"):
        open_source(escape.format(outside=outside), media_root=root)
    with pytest.raises(SourceError, match="outside the media root"):
        open_source(outside.as_uri(), media_root=root)


def test_it_refuses_a_symlink_that_leads_out_of_the_media_root(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    os.symlink(videos["mp4-h264"], root / "link.mp4")
    with pytest.raises(SourceError, match="outside the media root"):
        open_source("link.mp4", media_root=root)


@pytest.mark.parametrize(
    "path",
    [
        "clip.mp4; rm -rf /",
        "$(reboot).mp4",
        "`id`.mp4",
        "a|b.mp4",
        "a&b.mp4",
        "a>b.mp4",
        "clip\0.mp4",
        "*.mp4",
    ],
)
def test_it_refuses_shell_metacharacters_and_nul_in_paths(tmp_path: Path, path: str) -> None:
    with pytest.raises(SourceError, match=r"shell metacharacters|NUL"):
        open_source(str(tmp_path / path))
    with pytest.raises(SourceError, match=r"shell metacharacters|NUL"):
        open_source(path, media_root=tmp_path)


def test_it_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "gone.mp4"))


@pytest.mark.parametrize(
    "uri", ["ftp://127.0.0.1/cam.mp4", "s3://bucket/cam.mp4", "javascript://x", "gopher://h/"]
)
def test_it_refuses_unknown_schemes(uri: str) -> None:
    with pytest.raises(SourceError, match="unknown camera scheme"):
        open_source(uri)


@pytest.mark.parametrize("uri", ["", "   ", "file://example.com/etc/passwd", "file:///tmp/a.mp4?x=1"])
def test_it_refuses_empty_and_remote_file_uris(uri: str) -> None:
    with pytest.raises(SourceError):
        open_source(uri)


def test_it_opens_streams_with_the_given_timeouts(silent_listener: int, closed_port: int) -> None:
    with pytest.raises(SourceError, match="refused"):
        open_source(f"rtsp://127.0.0.1:{closed_port}/live")
    with pytest.raises(SourceError, match=r"within 0\.3s"):
        open_source(f"https://127.0.0.1:{silent_listener}/live", connect_timeout=0.3)


def test_it_dispatches_http_uris_to_the_stream_source(
    http_server: tuple[Path, ThreadingHTTPServer], videos: dict[str, Path]
) -> None:
    root, server = http_server
    (root / "c.mkv").write_bytes(videos["mkv-h264"].read_bytes())
    src = open_source(f"http://127.0.0.1:{server.server_address[1]}/c.mkv", connect_timeout=2.0)
    assert isinstance(src, StreamSource)
    src.close()
