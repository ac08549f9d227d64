from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gemel_engine import zoo
from gemel_engine.errors import SharingError
from gemel_engine.layers import analyze_models
from gemel_engine.memory import footprint
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import LayerRef, MergeInstance, MergePlan
from gemel_engine.sharing import apply_plan, verify_sharing
from tests.conftest import requires_cuda


def _plan(*layers: str, models=("a", "b"), mode="exact") -> MergePlan:
    return MergePlan(tuple(MergeInstance(tuple(LayerRef(m, layer) for m in models)) for layer in layers), mode)


def _twins(factory) -> ModelSet:
    first = factory(seed=1)
    return ModelSet({"a": first, "b": copy.deepcopy(first)})


def test_tying_identical_members_keeps_every_output(tiny_net_factory):
    models = _twins(tiny_net_factory)
    x = torch.randn(4, 3, 16, 16)
    before = {name: models[name](x) for name in models}
    plan = analyze_models(models.as_dict()).plan()
    apply_plan(models, plan)
    for name in models:
        assert torch.equal(models[name](x), before[name])


def test_tied_members_hold_one_storage_and_the_footprint_drops_by_the_optimum():
    models = ModelSet({"a": zoo.get_model("resnet18", num_classes=2), "b": zoo.get_model("resnet34", num_classes=3)})
    analysis = analyze_models(models.as_dict())
    before = footprint(models)
    apply_plan(models, analysis.plan())
    verify_sharing(models, analysis.plan())
    assert models["a"].layer1[0].conv1.weight is models["b"].layer1[0].conv1.weight
    assert before.param_bytes - footprint(models).param_bytes == analysis.max_savings_bytes


def test_one_backward_pass_accumulates_every_members_gradient_into_the_shared_tensor(tiny_net_factory):
    a, b = tiny_net_factory(seed=1), tiny_net_factory(seed=1)
    reference_a, reference_b = copy.deepcopy(a), copy.deepcopy(b)
    models = ModelSet({"a": a, "b": b})
    apply_plan(models, _plan("stem", "body"))
    x_a, x_b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    (a(x_a).sum() + b(x_b).sum()).backward()
    reference_a(x_a).sum().backward()
    reference_b(x_b).sum().backward()
    expected = reference_a.body.weight.grad + reference_b.body.weight.grad
    assert torch.allclose(a.body.weight.grad, expected, atol=1e-6)
    assert a.body.weight.grad is b.body.weight.grad
    assert a.head.weight.grad is not b.head.weight.grad
    assert torch.allclose(a.head.weight.grad, reference_a.head.weight.grad, atol=1e-6)


def test_an_optimizer_over_the_set_sees_each_shared_tensor_once(tiny_net_factory):
    models = ModelSet({"a": tiny_net_factory(seed=1), "b": tiny_net_factory(seed=2)})
    untied = len(list(models.parameters()))
    apply_plan(models, _plan("stem", "body", "head"))
    assert len(list(models.parameters())) == untied - 6  # weight and bias of three layers


def test_mean_warm_start_sets_the_shared_tensor_to_the_members_mean(tiny_net_factory):
    a, b = tiny_net_factory(seed=1), tiny_net_factory(seed=2)
    expected = (a.body.weight.detach().clone() + b.body.weight.detach().clone()) / 2
    apply_plan({"a": a, "b": b}, _plan("body"), warm_start="mean")
    assert torch.allclose(a.body.weight, expected) and b.body.weight is a.body.weight


def test_first_warm_start_keeps_the_first_members_weights(tiny_net_factory):
    a, b = tiny_net_factory(seed=1), tiny_net_factory(seed=2)
    expected = a.body.weight.detach().clone()
    apply_plan({"a": a, "b": b}, _plan("body"))
    assert torch.equal(b.body.weight, expected)


def test_sharing_survives_moving_the_set(tiny_net_factory):
    models = ModelSet({"a": tiny_net_factory(seed=1), "b": tiny_net_factory(seed=2)})
    plan = _plan("stem", "body")
    apply_plan(models, plan)
    models.to(torch.float64)
    verify_sharing(models, plan)
    assert models["a"].body.weight.dtype == torch.float64
    assert footprint(models).saved_param_bytes > 0


@requires_cuda
def test_sharing_survives_moving_the_set_to_the_gpu(tiny_net_factory):
    models = ModelSet({"a": tiny_net_factory(seed=1), "b": tiny_net_factory(seed=2)})
    plan = _plan("stem", "body")
    apply_plan(models, plan)
    models.to("cuda")
    verify_sharing(models, plan)
    assert models["b"].body.weight.is_cuda and models["a"].body.weight is models["b"].body.weight


def test_shape_mode_ties_weights_but_each_layer_keeps_its_own_stride(tiny_net_factory):
    a, b = tiny_net_factory(seed=1, stride=1), tiny_net_factory(seed=2, stride=2)
    with pytest.raises(SharingError, match="incompatible layers"):
        apply_plan({"a": a, "b": b}, _plan("body", mode="exact"))
    apply_plan({"a": a, "b": b}, _plan("body", mode="shape"))
    assert a.body.weight is b.body.weight
    assert (a.body.stride, b.body.stride) == ((1, 1), (2, 2))
    x = torch.randn(1, 3, 8, 8)
    assert a.body(a.stem(x)).shape[-1] == 8 and b.body(b.stem(x)).shape[-1] == 4


def test_incompatible_shapes_are_refused_naming_both_layers(tiny_net_factory):
    a, b = tiny_net_factory(seed=1), tiny_net_factory(seed=2, num_classes=5)
    with pytest.raises(SharingError, match=r"a:head is Linear\[3x8 3\].*b:head is Linear\[5x8 5\]"):
        apply_plan({"a": a, "b": b}, _plan("head"))


def test_a_refused_plan_leaves_every_model_untouched(tiny_net_factory):
    a, b = tiny_net_factory(seed=1), tiny_net_factory(seed=2, num_classes=5)
    with pytest.raises(SharingError):
        apply_plan({"a": a, "b": b}, _plan("body", "head"))
    assert a.body.weight is not b.body.weight


def test_a_missing_layer_or_model_is_named(tiny_net_factory):
    models = {"a": tiny_net_factory(), "b": tiny_net_factory()}
    with pytest.raises(SharingError, match="a:nothing"):
        apply_plan(models, _plan("nothing"))
    with pytest.raises(SharingError, match="model 'c'"):
        apply_plan(models, _plan("body", models=("a", "c")))


def test_a_normalisation_layer_is_not_shareable(tiny_net_factory):
    with pytest.raises(SharingError, match="BatchNorm2d, which is not shareable"):
        apply_plan({"a": tiny_net_factory(), "b": tiny_net_factory()}, _plan("norm"))


def test_verify_sharing_detects_untied_members(tiny_net_factory):
    with pytest.raises(SharingError, match="2 storages"):
        verify_sharing({"a": tiny_net_factory(), "b": tiny_net_factory()}, _plan("body"))


def test_an_unknown_warm_start_is_refused(tiny_net_factory):
    with pytest.raises(ValueError, match="warm_start"):
        apply_plan({"a": tiny_net_factory(), "b": tiny_net_factory()}, _plan("body"), warm_start="random")


def test_models_with_bad_names_cannot_form_a_set():
    with pytest.raises(Exception, match="model name"):
        ModelSet({"a.b": nn.Linear(1, 1)})
