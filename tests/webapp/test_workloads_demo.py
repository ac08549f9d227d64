"""The demo seed registers a built demo workload once: cameras, models and ready queries, reused on a rerun."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from gemel_engine.accuracy import Measurement
from gemel_engine.demo import SCALES
from gemel_engine.workload import Workload
from tests.webapp.test_workloads_factories import write_weights
from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query
from webapp.workloads.services import demo_seed

pytestmark = pytest.mark.django_db


def _write_built_demo(scale: str) -> Path:
    """Write the ``scale`` demo's workload.json with untrained weights, as a finished build leaves it (no
    training)."""
    spec = SCALES[scale]
    out = Path(settings.MEDIA_ROOT) / "demo" / scale
    entries = []
    for i, entry in enumerate(spec.queries):
        path = write_weights(out / "weights" / f"{entry.name}.safetensors", arch=entry.query.arch,
                             num_classes=entry.query.task.num_outputs)
        entries.append(dataclasses.replace(entry, weights=str(path.relative_to(out)), unmerged_accuracy=0.8 + i / 100,
                                           chance_accuracy=0.5, unmerged_test=Measurement(0.75, 0.7, 0.8, 200)))
    return Workload(scale, spec.cameras, tuple(entries), out).save(out / "workload.json")


@pytest.fixture
def built_tiny_demo(settings) -> Path:
    """The tiny demo, built (untrained weights)."""
    return _write_built_demo("tiny")


def test_a_second_demo_whose_camera_names_another_demo_took_registers_under_its_scales_prefix(built_tiny_demo):
    from webapp.workloads.services.demo import demo_name_prefix

    _write_built_demo("mix")  # cameras north, east and south, as tiny's north and east but other scenes
    assert demo_seed(scale="tiny").status == DemoSeed.Status.READY
    assert demo_name_prefix("mix") == "mix_" and demo_name_prefix("tiny") == ""
    assert demo_seed(scale="mix").status == DemoSeed.Status.READY
    cameras = sorted(Camera.objects.values_list("name", flat=True))
    assert cameras == ["east", "mix_east", "mix_north", "mix_south", "north"]
    assert Query.objects.filter(name="mix_south_traffic", camera__name="mix_south").exists()
    assert Query.objects.get(name="north_vehicles").camera.name == "north"  # tiny's rows are untouched
    assert demo_seed(scale="mix").status == DemoSeed.Status.READY  # a rerun reuses the prefixed rows
    assert Query.objects.count() == 3 + 6


def test_it_registers_a_built_demo_as_ready_queries_and_reuses_them_on_a_rerun(built_tiny_demo):
    seed = demo_seed(scale="tiny")
    assert seed.status == DemoSeed.Status.READY, seed.detail
    assert seed.queries_registered == seed.queries_total == 3
    assert sorted(Camera.objects.values_list("name", flat=True)) == ["east", "north"]
    north = Camera.objects.get(name="north")
    assert (north.width, north.height) == (32, 32) and north.sampling["every"] == 4 and north.thumbnail
    queries = Query.objects.order_by("name")
    assert all(q.status == Query.Status.READY for q in queries)
    assert queries.get(name="north_vehicles").unmerged_accuracy == 0.8
    assert queries.get(name="north_vehicles").unmerged_test == {"accuracy": 0.75, "interval": [0.7, 0.8], "frames": 200}
    call_command("demo_seed", "--scale", "tiny", "--wait")
    assert (Camera.objects.count(), ModelEntry.objects.count(), Query.objects.count()) == (2, 3, 3)


def test_a_camera_of_the_same_name_with_another_source_fails_the_seed_with_the_reason(built_tiny_demo):
    Camera.objects.create(name="north", source="synthetic://elsewhere")
    seed = demo_seed(scale="tiny")
    assert seed.status == DemoSeed.Status.FAILED
    assert "another source" in seed.detail


def test_starting_a_seed_records_it_as_queued(django_capture_on_commit_callbacks):
    from webapp.workloads.services import demo_seed_start

    with django_capture_on_commit_callbacks() as callbacks:
        task_id = demo_seed_start(scale="tiny")
    assert DemoSeed.objects.get(scale="tiny").celery_task_id == task_id
    assert len(callbacks) == 1


def test_a_seed_another_process_is_building_is_left_alone(
    built_tiny_demo, settings, django_capture_on_commit_callbacks
):
    import fcntl

    from webapp.workloads.services import demo_seed_start

    DemoSeed.objects.create(scale="tiny", status=DemoSeed.Status.BUILDING, celery_task_id="abc")
    lock = Path(settings.MEDIA_ROOT) / "demo" / ".tiny.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running build holds
        assert demo_seed(scale="tiny").status == DemoSeed.Status.BUILDING and not Query.objects.exists()
        with django_capture_on_commit_callbacks() as callbacks:
            assert demo_seed_start(scale="tiny") == "abc"
        assert callbacks == []
    # the holder is gone (a build that died leaves only a stale row): the next seed builds
    assert demo_seed(scale="tiny").status == DemoSeed.Status.READY


@pytest.fixture
def micro_scale(monkeypatch):
    """A real demo scale small enough to train in seconds: one short camera, two tiny models, two steps each."""
    from gemel_engine.data.sampling import SamplingSpec
    from gemel_engine.demo import DemoScale
    from gemel_engine.queries import Query as EngineQuery
    from gemel_engine.queries import Task
    from gemel_engine.train import TrainArgs
    from gemel_engine.workload import CameraSpec, QueryEntry

    camera = CameraSpec("micro_cam", "synthetic://micro_cam?seed=3&width=64&height=48&fps=5&frames=40",
                        SamplingSpec(size=(32, 32)), val_fraction=0.5, gap_seconds=0.0)
    task = Task("presence", ("car", "bus", "truck"))
    scale = DemoScale(
        name="micro", cameras=(camera,),
        queries=tuple(
            QueryEntry(EngineQuery(name, "micro_cam", "mobilenet_v3_small", task)) for name in ("m_a", "m_b")
        ),
        train={"mobilenet_v3_small": TrainArgs(steps=2, batch_size=8, device="cpu")},
    )
    monkeypatch.setitem(SCALES, "micro", scale)
    return scale


def test_a_real_build_registers_each_query_as_soon_as_its_model_is_trained(micro_scale, settings):
    seed = demo_seed(scale="micro")
    assert seed.status == DemoSeed.Status.READY, seed.detail
    workload_file = Path(settings.MEDIA_ROOT) / "demo" / "micro" / "workload.json"
    built = Workload.load(workload_file)
    first = Query.objects.get(name="m_a")
    assert first.status == Query.Status.READY
    assert first.unmerged_accuracy == built.query("m_a").unmerged_accuracy
    assert first.created_at.timestamp() < workload_file.stat().st_mtime  # registered before the build ended
    assert ModelEntry.objects.get(name="m_b").weights_sha256
    # The pace training took here, kept for a first merge's budget hint.
    assert all(q.train_frame_seconds and q.train_frame_seconds > 0 for q in Query.objects.all())


def test_a_running_build_shows_its_progress_on_the_overview_and_blocks_a_second_one(operator_client):
    from django.contrib.staticfiles import finders

    detail = "training east_cars (mobilenet_v2): step 120 of 300, about 2 min left for this model"
    DemoSeed.objects.create(scale="small", status=DemoSeed.Status.BUILDING, queries_registered=2, queries_total=6,
                            detail=detail)
    overview = operator_client.get("/").content.decode()
    assert "Demo workload <strong>small</strong> is being built" in overview
    assert "step 120 of 300, about 2 min left" in overview and "2/6 queries registered" in overview
    assert "The demo build above registers them" in overview
    # The card updates itself: its figures are addressable and the page's script polls the seeds' API.
    assert 'data-registered="2"' in overview and '<span data-field="progress">2/6 queries registered</span>' in overview
    assert "/api/demo-seeds" in Path(finders.find("js/overview.js")).read_text()
    cameras = operator_client.get(reverse("cameras")).content.decode()
    assert 'title="a demo build is running"' in cameras
    select = cameras[cameras.rindex("<select", 0, cameras.index('id="id_scale"')):]
    assert "disabled" in select[:select.index(">")]  # the scale cannot be changed mid-build
    DemoSeed.objects.filter(scale="small").update(status=DemoSeed.Status.READY)
    assert "is being built" not in operator_client.get("/").content.decode()
    cameras = operator_client.get(reverse("cameras")).content.decode()
    assert 'title="a demo build is running"' not in cameras
    select = cameras[cameras.rindex("<select", 0, cameras.index('id="id_scale"')):]
    assert "disabled" not in select[:select.index(">")]
