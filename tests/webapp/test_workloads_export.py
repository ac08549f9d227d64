"""workload_export writes an engine workload the merge search can load; queries_ready selects measured queries."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from gemel_engine.workload import Workload
from tests.webapp.test_workloads_factories import make_camera, make_model, make_query
from webapp.workloads.models import Query
from webapp.workloads.selectors import queries_ready
from webapp.workloads.services import workload_export

pytestmark = pytest.mark.django_db


def test_it_writes_a_workload_the_engine_loads_with_weights_beside_it(tmp_path):
    camera = make_camera("north")
    model = make_model("shared-model")
    make_query("north_vehicles", camera=camera, model=model, unmerged_accuracy=0.91, chance_accuracy=0.55)
    make_query("north_traffic", camera=camera, model=make_model("other", num_classes=3),
               task={"kind": "count", "classes": ["car"], "count_edges": [1, 2]}, target_fraction=0.9)

    path = workload_export(queries=queries_ready(), out_dir=tmp_path / "job", name="job-1")

    workload = Workload.load(path)
    assert workload.name == "job-1"
    assert [c.name for c in workload.cameras] == ["north"]
    assert workload.camera("north").labels == "ground_truth"
    traffic = workload.query("north_traffic")
    assert traffic.query.task.num_outputs == 3
    assert traffic.query.target.relative == 0.9
    vehicles = workload.query("north_vehicles")
    assert vehicles.unmerged_accuracy == 0.91 and vehicles.chance_accuracy == 0.55
    assert workload.weights_path(vehicles).is_relative_to((tmp_path / "job").resolve())
    assert workload.load_model(vehicles) is not None
    assert json.loads(path.read_text())["queries"][0]["weights"].startswith("weights/")


def test_it_refuses_a_query_that_is_not_ready(tmp_path):
    make_query("north_vehicles", status=Query.Status.MEASURING)
    with pytest.raises(ValidationError, match="north_vehicles"):
        workload_export(queries=Query.objects.all(), out_dir=tmp_path)


def test_it_refuses_an_empty_selection(tmp_path):
    with pytest.raises(ValidationError):
        workload_export(queries=[], out_dir=tmp_path)


def test_queries_ready_leaves_out_pending_and_failed_queries():
    camera, model = make_camera(), make_model()
    make_query("a_ready", camera=camera, model=model)
    make_query("b_failed", camera=camera, model=model, status=Query.Status.FAILED)
    make_query("c_pending", camera=camera, model=model, status=Query.Status.PENDING)
    assert [q.name for q in queries_ready()] == ["a_ready"]
