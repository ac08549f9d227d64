from __future__ import annotations

import pytest
import torch
from torch import nn

from gemel_engine import zoo
from gemel_engine.errors import PlanError
from gemel_engine.layers import (
    analyze_models,
    find_instances,
    iter_shareable_layers,
    layer_signature,
    structural_optimum,
)

ANALYSIS_KEYS = {"mode", "models", "total_param_bytes", "instances", "max_savings_bytes", "max_savings_fraction"}


def _meta(arch: str, classes: int = 2) -> nn.Module:
    return zoo.get_model(arch, num_classes=classes, device="meta")


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _non_norm_param_bytes(model: nn.Module) -> int:
    norm = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    return _bytes(p for m in model.modules() if not isinstance(m, norm) for p in m.parameters(recurse=False))


def _assert_instances_are_valid(instances) -> None:
    for instance in instances:
        models = [member.model for member in instance.members]
        assert len(models) == len(set(models)), "an instance holds two layers of one model"
        assert len(models) >= 2


def test_vgg16_is_contained_in_vgg19_so_the_optimum_is_all_of_vgg16():
    # vgg16's layers are a sub-multiset of vgg19's (same conv widths, fewer per stage, same classifier):
    # sharing everything keeps one copy of each vgg16 layer.
    models = {"a": _meta("vgg16"), "b": _meta("vgg19")}
    assert structural_optimum(models) == _bytes(models["a"].parameters())
    mixed_heads = {"a": _meta("vgg16", 2), "b": _meta("vgg19", 3)}
    head = mixed_heads["a"].classifier[-1]
    assert structural_optimum(mixed_heads) == _bytes(mixed_heads["a"].parameters()) - _bytes(head.parameters())


def test_resnet50_101_152_optimum_equals_the_smaller_models_shareable_bytes():
    # resnet152 has at least as many blocks as resnet50 and resnet101 in every stage, so every layer of
    # the two smaller models finds a partner: the optimum is their bytes outside normalisation layers.
    models = {name: _meta(name) for name in ("resnet50", "resnet101", "resnet152")}
    expected = _non_norm_param_bytes(models["resnet50"]) + _non_norm_param_bytes(models["resnet101"])
    for mode in ("exact", "shape"):
        analysis = analyze_models(models, mode=mode)
        assert structural_optimum(models, mode=mode) == expected
        assert analysis.max_savings_bytes == expected
        _assert_instances_are_valid(analysis.instances)


def test_a_detector_shares_its_whole_resnet50_backbone_with_a_resnet50_classifier():
    models = {"det": _meta("fasterrcnn_resnet50_fpn", 6), "cls": _meta("resnet50", 2)}
    classifier = models["cls"]
    expected = _non_norm_param_bytes(classifier) - _bytes(classifier.fc.parameters())
    analysis = analyze_models(models)
    assert analysis.max_savings_bytes == expected
    assert analysis.total_param_bytes == _bytes(models["det"].parameters()) + _bytes(classifier.parameters())
    assert analysis.max_savings_fraction == pytest.approx(expected / analysis.total_param_bytes)
    paired = {(m.model, m.layer) for c in analysis.instances for m in c.members}
    assert ("cls", "layer1.0.conv1") in paired and ("det", "backbone.body.layer1.0.conv1") in paired


def test_shape_mode_shares_layers_that_differ_only_in_stride_padding_and_dilation():
    a = nn.Sequential(nn.Conv2d(8, 8, 3, stride=1, padding=1))
    b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=0, dilation=2))
    models = {"a": a, "b": b}
    assert find_instances(models, mode="exact") == []
    [instance] = find_instances(models, mode="shape")
    assert instance.savings_bytes == _bytes(a.parameters())


def test_layers_with_equal_shapes_but_different_groups_never_share():
    models = {"a": nn.Sequential(nn.Conv2d(8, 8, 3, groups=2)), "b": nn.Sequential(nn.Conv2d(4, 8, 3))}
    assert models["a"][0].weight.shape == models["b"][0].weight.shape
    assert find_instances(models, mode="shape") == []


def test_a_bias_and_a_biasless_layer_do_not_share():
    models = {"a": nn.Sequential(nn.Linear(4, 4)), "b": nn.Sequential(nn.Linear(4, 4, bias=False))}
    assert find_instances(models, mode="shape") == []


def test_normalisation_layers_are_never_shareable():
    layers = list(iter_shareable_layers(_meta("resnet18")))
    assert layers and all(layer.signature.kind in {"Conv2d", "Linear"} for layer in layers)
    assert not any("bn" in layer.path for layer in layers)


def test_a_model_never_shares_a_layer_with_itself():
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(5)])
    assert find_instances({"only": model}) == []
    assert structural_optimum({"only": model}) == 0


def test_a_linear_subclass_matches_a_plain_linear():
    attention = nn.MultiheadAttention(8, 2)
    assert layer_signature(attention.out_proj) == layer_signature(nn.Linear(8, 8))


def test_unequal_layer_counts_pair_in_module_order_and_count_once_per_extra_layer():
    a = nn.Sequential(*[nn.Linear(16, 16) for _ in range(3)])
    b = nn.Sequential(*[nn.Linear(16, 16) for _ in range(1)])
    c = nn.Sequential(*[nn.Linear(16, 16) for _ in range(2)])
    instances = find_instances({"a": a, "b": b, "c": c})
    one = _bytes(a[0].parameters())
    assert [len(i.members) for i in instances] == [3, 2]
    assert [str(m) for m in instances[0].members] == ["a:0", "b:0", "c:0"]
    assert structural_optimum({"a": a, "b": b, "c": c}) == one * (3 + 1 + 2 - 3)


def test_instances_are_ordered_by_savings_and_sum_to_the_optimum():
    models = {"a": _meta("resnet18"), "b": _meta("resnet34"), "c": _meta("mobilenet_v2")}
    analysis = analyze_models(models, mode="shape")
    savings = [c.savings_bytes for c in analysis.instances]
    assert savings == sorted(savings, reverse=True)
    assert analysis.max_savings_bytes == structural_optimum(models, mode="shape")


def test_shape_mode_never_saves_less_than_exact_mode():
    models = {"a": _meta("resnet18"), "b": _meta("resnet50"), "c": _meta("resnet152")}
    assert structural_optimum(models, mode="shape") > structural_optimum(models, mode="exact")


def test_an_unknown_mode_is_refused():
    with pytest.raises(PlanError, match="match mode"):
        structural_optimum({"a": nn.Linear(2, 2)}, mode="fuzzy")


def test_the_analysis_serialises_with_the_documented_keys():
    model = _meta("resnet18")
    data = analyze_models({"a": model, "b": _meta("resnet18")}).to_dict()
    assert set(data) >= ANALYSIS_KEYS
    assert set(data["instances"][0]) == {"signature", "members", "bytes", "savings_bytes"}
    expected = _non_norm_param_bytes(model) / (2 * _bytes(model.parameters()))
    assert data["max_savings_fraction"] == pytest.approx(expected)


def test_the_share_everything_plan_covers_every_instance():
    analysis = analyze_models({"a": _meta("resnet18"), "b": _meta("resnet34")})
    plan = analysis.plan()
    assert len(plan.instances) == len(analysis.instances)
    assert plan.models == {"a", "b"}
    assert torch.Size(next(iter_shareable_layers(_meta("resnet18"))).signature.shapes[0]) == (64, 3, 7, 7)
