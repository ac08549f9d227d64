from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gemel_engine.errors import DeploymentError, GemelError
from gemel_engine.runtime.protocol import CameraFeed, DeploymentSpec, MetricsReport, ProtocolError
from gemel_engine.runtime.serving import EdgeServer
from tests.engine.runtime.conftest import desired_json
from tests.waiting import wait_until

PROTOCOL_EXAMPLE = {
    "deployment": 13,
    "bundle": {"files": [{"name": "manifest.json", "url": "/x", "sha256": "0", "size_bytes": 1}]},
    "budget_bytes": 1073741824,
    "scheduler": "merged",
    "queries": [
        {"name": "north_vehicles", "model": "north_vehicles", "task": {"kind": "presence", "classes": ["car"]},
         "camera": {"name": "north", "source": "synthetic://north?seed=1", "fps": 10.0, "width": 64, "height": 64},
         "slo_ms": 500.0},
    ],
}


def _frames(server: EdgeServer) -> int:
    return sum(q["frames_total"] for q in server.metrics_snapshot()["queries"].values())


def test_the_protocols_desired_object_round_trips_without_its_bundle():
    spec = DeploymentSpec.from_json(PROTOCOL_EXAMPLE)
    assert spec.deployment == 13 and spec.budget_bytes == 1073741824 and spec.scheduler == "merged"
    assert spec.queries[0].camera == CameraFeed("north", "synthetic://north?seed=1", 10.0, 64, 64)
    data = spec.to_json()
    assert "bundle" not in data
    assert DeploymentSpec.from_json(json.loads(json.dumps(data))) == spec
    assert data["queries"][0]["task"]["classes"] == ["car"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(deployment="13"), "deployment id"),
        (lambda d: d.update(scheduler="fifo"), "unknown scheduler 'fifo'"),
        (lambda d: d.update(budget_bytes=-1), "budget_bytes"),
        (lambda d: d.update(queries=[]), "no queries"),
        (lambda d: d["queries"].append(d["queries"][0]), "query names repeat"),
        (lambda d: d["queries"][0].update(slo_ms=0), "slo_ms"),
        (lambda d: d["queries"][0]["camera"].update(fps="ten"), "'fps'"),
        (lambda d: d["queries"][0].update(task={"kind": "colour", "classes": ["car"]}), "task kind"),
        (lambda d: d["queries"][0].pop("model"), "'model' is missing"),
        (lambda d: d["queries"][0]["camera"].update(start_frame=-1), "start_frame must be an integer"),
        (lambda d: d["queries"][0]["camera"].update(start_frame=10**12), "start_frame must be an integer"),
        (lambda d: d["queries"][0]["camera"].update(start_frame=3.5), "'start_frame'"),
    ],
)
def test_a_malformed_desired_object_is_refused_with_a_clear_error(change, message):
    data = json.loads(json.dumps(PROTOCOL_EXAMPLE))
    change(data)
    with pytest.raises(DeploymentError, match=message):
        DeploymentSpec.from_json(data)


@pytest.fixture
def server(small_bundle: Path):
    server = EdgeServer(device="cpu")
    first = server.prepare(small_bundle, DeploymentSpec.from_json(desired_json(1, ["a", "b"])))
    server.warm_up(first)
    server.activate(first)
    server.start()
    yield server
    server.close()


def test_a_failed_prepare_leaves_the_active_deployment_serving(server: EdgeServer, small_bundle: Path, tmp_path):
    active = server.active
    wait_until(lambda: _frames(server) >= 4, timeout=60, what="frames served")
    broken = tmp_path / "broken"
    shutil.copytree(small_bundle, broken)
    (broken / "tensors.safetensors").write_bytes(b"not tensors")
    one_model = DeploymentSpec.from_json(desired_json(2, ["a"]))
    failures = [
        (broken, one_model, "bundle refused"),
        (small_bundle, DeploymentSpec.from_json(desired_json(2, ["a", "zebra"])), "no model zebra"),
        (small_bundle, DeploymentSpec.from_json(desired_json(2, ["a"], budget=1000)), "out of budget"),
        (small_bundle, DeploymentSpec.from_json(desired_json(2, ["a", "b"], budget=8_000_000,
                                                              scheduler="space-sharing")), "space-sharing needs"),
    ]
    bad_camera = desired_json(2, ["a"])
    bad_camera["queries"][0]["camera"]["source"] = str(tmp_path / "missing.mp4")
    failures.append((small_bundle, DeploymentSpec.from_json(bad_camera), "unreachable"))
    for bundle, spec, message in failures:
        with pytest.raises(DeploymentError, match=message):
            server.prepare(bundle, spec)
        assert server.active is active
    before = _frames(server)
    wait_until(lambda: _frames(server) > before + 2, timeout=60, what="frames served")
    assert server.serving and server.last_error is None
    assert server.metrics_snapshot()["deployment"] == 1


def test_activate_switches_atomically_while_serving(server: EdgeServer, small_bundle: Path):
    old = server.active
    wait_until(lambda: _frames(server) >= 3, timeout=60, what="frames served")
    spec = DeploymentSpec.from_json(desired_json(2, ["b"], scheduler="time-sharing", slo_ms=300))
    prepared = server.prepare(small_bundle, spec)
    assert server.active is old and not old.released  # preparing never disturbs the active deployment
    server.warm_up(prepared)
    server.activate(prepared)
    assert server.active is prepared and old.released
    snapshot = server.metrics_snapshot()
    assert snapshot["deployment"] == 2 and set(snapshot["queries"]) == {"q_b"}
    wait_until(lambda: _frames(server) >= 3, timeout=60, what="frames served")
    assert server.serving and server.last_error is None
    with pytest.raises(GemelError, match="released"):
        server.activate(old)


def test_an_idle_server_reports_the_protocols_idle_metrics():
    server = EdgeServer(device="cpu", budget_bytes=123)
    snapshot = server.metrics_snapshot()
    assert snapshot == {
        "deployment": None, "simulated": True, "queries": {},
        "memory": {"budget_bytes": 123, "resident_bytes": 0, "shared_bytes": 0, "per_model_bytes": {},
                   "swapped_bytes_total": 0, "gpu": None},
    }
    info = server.device_info()
    assert (info["kind"], info["memory_total_bytes"]) == ("cpu", 123)
    assert f"{os.cpu_count()} cores (simulated device)" in info["name"]


def test_what_a_serving_node_reports_passes_the_protocols_checks_unchanged(server: EdgeServer):
    wait_until(lambda: _frames(server) >= 3, timeout=60, what="frames served")
    snapshot = server.metrics_snapshot()
    report = MetricsReport.from_json(snapshot)
    assert set(report.queries) == {"q_a", "q_b"}
    assert report.to_json() == {"memory": snapshot["memory"], "queries": snapshot["queries"]}
    assert report.memory.resident_bytes > 0


def test_what_an_idle_node_reports_passes_the_protocols_checks():
    idle = EdgeServer(device="cpu")
    try:
        snapshot = idle.metrics_snapshot()
        assert MetricsReport.from_json(snapshot).to_json() == {"memory": snapshot["memory"], "queries": {}}
    finally:
        idle.close()


@pytest.mark.parametrize(("report", "message"), [
    ({"memory": {"resident_bytes": 1, "shared_bytes": 2}}, "exceeds resident_bytes"),
    ({"queries": {"q": {"frames_total": 1, "dropped_total": 2}}}, "exceeds frames_total"),
    ({"queries": {"": {}}}, "names must be"),
    ({"queries": {"q\u202egnp.exe": {}}}, "printable"),
    ({"memory": {"resident_bytes": 2.5}}, "whole number"),
    ({"queries": {"q": {"latency_p95_ms": float("nan")}}}, "finite"),
])
def test_the_protocol_names_the_field_that_breaks_its_rules(report, message):
    with pytest.raises(ProtocolError, match=message):
        MetricsReport.from_json(report)


def test_a_feed_serves_from_its_start_frame_and_a_finished_clip_starts_there_again():
    from gemel_engine.runtime.serving import _Camera

    camera = _Camera(CameraFeed("north", "synthetic://north?seed=1&frames=12", 10.0, 32, 32, start_frame=9))
    try:
        assert [camera.first.index, *(camera.read().index for _ in range(5))] == [9, 10, 11, 9, 10, 11]
    finally:
        camera.close()
    # A start past the clip's end serves the clip from its first frame rather than nothing.
    camera = _Camera(CameraFeed("north", "synthetic://north?seed=1&frames=4", 10.0, 32, 32, start_frame=40))
    try:
        assert [camera.first.index, camera.read().index] == [0, 1]
    finally:
        camera.close()
    assert CameraFeed.from_json({"name": "n", "source": "s", "fps": 1, "width": 8, "height": 8}).start_frame == 0
