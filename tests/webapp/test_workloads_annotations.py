"""Annotations uploaded for an image-folder camera: matched to its frames before anything is kept, with the
file and line named on a mismatch; their classes become the camera's vocabulary."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from tests.webapp.test_workloads_factories import make_camera, make_model, make_query
from webapp.workloads.engine import camera_spec, engine_query
from webapp.workloads.models import Camera, Query
from webapp.workloads.services import camera_register

pytestmark = pytest.mark.django_db


def _folder_camera(settings, frames: int = 6) -> Camera:
    folder = Path(settings.MEDIA_ROOT) / "street"
    folder.mkdir(parents=True)
    for index in range(frames):  # odd frames show a bright square, what the tests' labels mark
        image = np.full((24, 32, 3), 40, np.uint8)
        if index % 2:
            image[6:18, 8:24] = 230
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    return camera_register(name="street", source=str(folder), fps=1.0, width=32, height=24)


def _zip(files: dict[str, str]) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return SimpleUploadedFile("labels.zip", buffer.getvalue(), content_type="application/zip")


def _upload(client, camera: Camera, upload: SimpleUploadedFile):
    return client.post(reverse("camera_annotations", args=[camera.pk]), {"file": upload})


def _annotation_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "annotations"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_person_0_yolo_labels_with_classes_txt_label_the_camera_and_its_person_query(operator_client, settings):
    camera = _folder_camera(settings)
    files = {"labels/0001.txt": "0 0.5 0.5 0.5 0.5\n", "labels/0003.txt": "1 0.2 0.2 0.2 0.2\n",
             "classes.txt": "person\ncar\n", "images/0001.png": "not read"}
    response = _upload(operator_client, camera, _zip(files))
    assert response.status_code == 302, response.content.decode()[:2000]
    camera.refresh_from_db()
    assert (camera.labels, camera.vocabulary) == ("yolo", ["person", "car"])
    assert camera.vocabulary_source == "annotations/labels/classes.txt"
    spec = camera_spec(camera)
    assert spec.labels == "yolo" and Path(spec.annotations, "0001.txt").is_file()
    assert "from annotations/labels/classes.txt" in operator_client.get(reverse("cameras")).content.decode()
    described = operator_client.get(f"/api/cameras/{camera.pk}").json()
    assert (described["labels"], described["classes"]) == ("yolo", ["person", "car"])
    query = make_query("people", camera=camera, model=make_model(), task={"kind": "presence", "classes": ["person"]},
                       status=Query.Status.PENDING)
    assert engine_query(query).task.vocabulary == ("person", "car")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0009.txt": "0 0.5 0.5 0.5 0.5\n"}, r"label files match no frame: 0009.txt"),
        ({"0001.txt": "2 0.5 0.5 0.5 0.5\n", "classes.txt": "person\ncar\n"},
         "annotations/labels/0001.txt:1: class id 2 is outside the 2 known classes"),
        ({"0001.txt": "0 0.5 0.5\n"}, "annotations/labels/0001.txt:1: expected &#x27;class_id cx cy w h&#x27;"),
        ({"../0001.txt": "0 0.5 0.5 0.5 0.5\n"}, "points outside the archive"),
        ({"notes.md": "hello"}, "holds no YOLO label files"),
    ],
)
def test_annotations_that_do_not_match_the_frames_are_refused_keeping_nothing(operator_client, settings, files,
                                                                               message):
    camera = _folder_camera(settings)
    response = _upload(operator_client, camera, _zip(files))
    assert response.status_code == 400 and message in response.content.decode()
    camera.refresh_from_db()
    assert (camera.labels, camera.annotations, camera.vocabulary) == ("", "", [])
    assert _annotation_files(settings) == []


def test_a_coco_file_labels_the_camera_with_its_categories(operator_client, settings):
    camera = _folder_camera(settings, frames=2)
    coco = {"images": [{"id": 1, "file_name": "0000.png"}, {"id": 2, "file_name": "0001.png"}],
            "annotations": [{"image_id": 2, "category_id": 3, "bbox": [2, 2, 10, 10]}],
            "categories": [{"id": 3, "name": "forklift"}]}
    upload = SimpleUploadedFile("coco.json", json.dumps(coco).encode(), content_type="application/json")
    assert _upload(operator_client, camera, upload).status_code == 302
    camera.refresh_from_db()
    assert (camera.labels, camera.vocabulary) == ("coco", ["forklift"])
    missing = {**coco, "images": coco["images"][:1], "annotations": []}
    upload = SimpleUploadedFile("coco.json", json.dumps(missing).encode(), content_type="application/json")
    response = _upload(operator_client, camera, upload)
    assert "frames without an image entry: 0001.png" in response.content.decode()
    camera.refresh_from_db()
    assert camera.vocabulary == ["forklift"] and len(_annotation_files(settings)) == 1


def test_annotations_that_would_break_a_query_on_the_camera_are_refused(operator_client, settings):
    camera = _folder_camera(settings)
    make_query("cars", camera=camera, model=make_model(), task={"kind": "presence", "classes": ["car"]})
    response = _upload(operator_client, camera, _zip({"0001.txt": "0 0.5 0.5 0.5 0.5\n", "classes.txt": "person\n"}))
    assert "query &#x27;cars&#x27; would break: unknown class name(s) [&#x27;car&#x27;]" in response.content.decode()
    assert _annotation_files(settings) == []


def test_a_video_file_camera_takes_yolo_labels_naming_its_frames_as_cvat_does(operator_client, settings):
    from gemel_engine.data.video import write_video

    clip = []
    for index in range(6):
        image = np.full((24, 32, 3), 40, np.uint8)
        if index % 2:
            image[6:18, 8:24] = 230
        clip.append(image)
    path = Path(settings.MEDIA_ROOT) / "street.mkv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(clip, path, fps=1.0, codec="mjpeg")
    camera = camera_register(name="street", source=str(path), fps=1.0, width=32, height=24)
    labels = {f"frame_{index:06d}.txt": "0 0.5 0.5 0.5 0.5\n" for index in (1, 3, 5)}
    response = _upload(operator_client, camera, _zip({**labels, "classes.txt": "person\n"}))
    assert response.status_code == 302, response.content.decode()[:2000]
    camera.refresh_from_db()
    assert (camera.labels, camera.vocabulary) == ("yolo", ["person"])
    response = _upload(operator_client, camera, _zip({"frame_000006.txt": "0 0.5 0.5 0.5 0.5\n"}))
    assert response.status_code == 400 and "match no frame: frame_000006.txt" in response.content.decode()


def test_a_synthetic_camera_cannot_take_annotations(operator_client):
    response = _upload(operator_client, make_camera(), _zip({"0001.txt": "0 0.5 0.5 0.5 0.5\n"}))
    assert "annotations need an image-folder or video-file source" in response.content.decode()


def test_a_viewer_cannot_upload_annotations(viewer_client, settings):
    camera = _folder_camera(settings)
    assert _upload(viewer_client, camera, _zip({"0001.txt": "0 0.5 0.5 0.5 0.5\n"})).status_code == 403


def test_the_api_takes_annotations_and_names_the_culprit(operator_client, settings):
    camera = _folder_camera(settings)
    bad = operator_client.post(f"/api/cameras/{camera.pk}/annotations", {"file": _zip({"0001.txt": "0 0.5\n"})})
    assert bad.status_code == 400 and "0001.txt:1: expected 'class_id cx cy w h'" in bad.json()["detail"]
    good = operator_client.post(f"/api/cameras/{camera.pk}/annotations",
                                {"file": _zip({"0001.txt": "0 0.5 0.5 0.5 0.5\n"})})
    assert good.status_code == 200 and good.json()["labels"] == "yolo" and len(good.json()["classes"]) == 80


def test_a_new_source_that_the_annotations_do_not_match_is_refused_keeping_both(operator_client, settings):
    from django.core.exceptions import ValidationError

    from webapp.workloads.services import camera_update

    camera = _folder_camera(settings, frames=4)
    assert _upload(operator_client, camera, _zip({"0003.txt": "0 0.5 0.5 0.5 0.5\n"})).status_code == 302
    camera.refresh_from_db()
    other = Path(settings.MEDIA_ROOT) / "other"
    other.mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(other / f"{index:04d}.png")
    with pytest.raises(ValidationError, match=r"annotations do not match the new source .*match no frame: 0003\.txt"):
        camera_update(camera=camera, source=str(other))
    camera.refresh_from_db()
    assert camera.source.endswith("street") and camera.labels == "yolo" and len(_annotation_files(settings)) == 1


def test_a_zip_that_unpacks_past_its_bounds_is_refused_keeping_nothing(operator_client, settings, monkeypatch):
    from webapp.workloads.services import cameras

    camera = _folder_camera(settings)
    monkeypatch.setattr(cameras, "MAX_LABEL_BYTES", 30)
    files = {f"{index:04d}.txt": "0 0.5 0.5 0.5 0.5\n" for index in range(6)}  # 108 bytes unpacked
    response = _upload(operator_client, camera, _zip(files))
    assert response.status_code == 400 and "over 0 MiB unpacked" in response.content.decode()
    monkeypatch.setattr(cameras, "MAX_LABEL_BYTES", 64 << 20)
    monkeypatch.setattr(cameras, "MAX_LABEL_FILE_BYTES", 10)
    response = _upload(operator_client, camera, _zip(files))
    assert "0000.txt: over 10 bytes unpacked" in response.content.decode()
    assert _annotation_files(settings) == []


def test_a_coco_upload_that_is_not_json_is_refused_naming_the_file(operator_client, settings):
    camera = _folder_camera(settings, frames=2)
    upload = SimpleUploadedFile("coco.json", b"{not json", content_type="application/json")
    response = _upload(operator_client, camera, upload)
    assert response.status_code == 400 and "annotations/coco.json: cannot read COCO annotations" in (
        response.content.decode())
    assert _annotation_files(settings) == []
