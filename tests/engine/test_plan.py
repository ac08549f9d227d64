from __future__ import annotations

from pathlib import Path

import pytest

from gemel_engine.errors import PlanError
from gemel_engine.plan import LayerRef, MergeInstance, MergePlan


def _plan() -> MergePlan:
    return MergePlan(
        (
            MergeInstance((LayerRef("a", "layer1.0.conv1"), LayerRef("b", "layer1.0.conv1")), "Conv2d[...]"),
            MergeInstance((LayerRef("a", "fc"), LayerRef("b", "fc"), LayerRef("c", "head.0"))),
        ),
        mode="shape",
        meta={"strategy": "all"},
    )


def test_a_plan_round_trips_through_json(tmp_path: Path):
    plan = _plan()
    assert MergePlan.from_json(plan.to_json()) == plan
    assert MergePlan.load(plan.save(tmp_path / "plan.json")) == plan


def test_a_plan_is_frozen():
    with pytest.raises(AttributeError):
        _plan().mode = "exact"


def test_two_layers_of_one_model_in_an_instance_are_refused_by_name():
    with pytest.raises(PlanError, match=r"a:conv1 and a:conv2 are both in model 'a'"):
        MergeInstance((LayerRef("a", "conv1"), LayerRef("a", "conv2")))


def test_a_layer_in_two_instances_is_refused():
    first = MergeInstance((LayerRef("a", "x"), LayerRef("b", "x")))
    second = MergeInstance((LayerRef("a", "x"), LayerRef("c", "x")))
    with pytest.raises(PlanError, match="layer a:x appears in instances 0 and 1"):
        MergePlan((first, second))


def test_an_instance_needs_two_members():
    with pytest.raises(PlanError, match="at least two"):
        MergeInstance((LayerRef("a", "x"),))


@pytest.mark.parametrize(
    ("model", "layer"), [("a b", "x"), ("", "x"), ("a", "x..y"), ("a", "x;rm -rf"), ("a" * 65, "x")]
)
def test_bad_model_names_and_layer_paths_are_refused(model, layer):
    with pytest.raises(PlanError):
        LayerRef(model, layer)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other"}', "not a merge plan"),
        ('{"format": "gemel-plan", "version": 99, "instances": []}', "unsupported plan version 99"),
        ('{"format": "gemel-plan", "version": 1, "instances": {}}', "must be a list"),
        ('{"format": "gemel-plan", "version": 1, "instances": [{"members": [{"model": "a"}]}]}', "each member"),
        ('{"format": "gemel-plan", "version": 1, "mode": "fuzzy", "instances": []}', "match mode"),
    ],
)
def test_malformed_plan_documents_are_refused(text, message):
    with pytest.raises(PlanError, match=message):
        MergePlan.from_json(text)


def test_a_missing_plan_file_is_named(tmp_path: Path):
    with pytest.raises(PlanError, match=r"absent\.json"):
        MergePlan.load(tmp_path / "absent.json")


def test_extending_a_plan_keeps_it_valid():
    plan = _plan()
    bigger = plan.extended([MergeInstance((LayerRef("a", "y"), LayerRef("b", "y")))])
    assert len(bigger.instances) == 3 and bigger.mode == plan.mode
    with pytest.raises(PlanError):
        plan.extended([MergeInstance((LayerRef("a", "fc"), LayerRef("d", "fc")))])
