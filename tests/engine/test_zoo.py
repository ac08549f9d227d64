from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gemel_engine import zoo
from gemel_engine.errors import RegistryError, UnknownArchitectureError, WeightsError

REQUIRED = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "inception_v3",
    "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
}


def test_it_registers_every_required_architecture():
    assert set(zoo.list_models()) >= REQUIRED
    assert set(zoo.list_models(task="detection")) >= {"ssd300_vgg16", "fasterrcnn_resnet50_fpn"}
    assert "resnet50" not in zoo.list_models(task="detection")


def test_it_refuses_to_register_a_name_twice():
    with pytest.raises(RegistryError, match="resnet18"):
        zoo.register_model("resnet18", family="resnet", task="classification")(lambda *, num_classes: nn.Identity())
    assert zoo.get_spec("resnet18").family == "resnet"


def test_an_unknown_architecture_raises_an_error_that_lists_the_known_ones():
    with pytest.raises(UnknownArchitectureError, match=r"resnet19.*known: .*resnet18"):
        zoo.get_model("resnet19")


def test_builders_take_keyword_only_arguments():
    with pytest.raises(TypeError):
        zoo.get_spec("resnet18").builder(3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_it_refuses_a_bad_class_count(bad):
    with pytest.raises(ValueError, match="num_classes"):
        zoo.get_model("resnet18", num_classes=bad, device="meta")


@pytest.mark.parametrize("arch", sorted(REQUIRED))
def test_every_architecture_builds_untrained_with_the_requested_classes(arch):
    model = zoo.get_model(arch, num_classes=7, device="meta")
    if zoo.get_spec(arch).task == "classification":
        last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert last_linear.out_features == 7
    else:
        assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_a_classifier_runs_at_a_tiny_resolution():
    model = zoo.get_model("resnet18", num_classes=4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def _tiny_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_safetensors_weights_round_trip_bit_for_bit(tmp_path: Path):
    source = zoo.get_model("mobilenet_v3_small", num_classes=3)
    path = zoo.save_weights(source, tmp_path / "w.safetensors")
    target = zoo.load_weights(zoo.get_model("mobilenet_v3_small", num_classes=3), path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_pt_weights_load_through_weights_only(tmp_path: Path):
    source = zoo.get_model("resnet18", num_classes=2)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    target = zoo.load_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "w.pt")
    assert torch.equal(target.fc.weight, source.fc.weight)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "side-effect"
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="cannot read weights safely"):
        zoo.read_state_dict(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load would have run it
    assert marker.read_text() == "pwned"


def test_a_truncated_safetensors_file_is_refused(tmp_path: Path):
    path = zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"w\.safetensors"):
        zoo.read_state_dict(path)


def test_a_text_file_named_safetensors_is_not_a_safetensors_file(tmp_path: Path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes, not weights\n" * 20)
    with pytest.raises(WeightsError, match=r"notes\.safetensors: not a safetensors file") as caught:
        zoo.read_state_dict(path)
    assert "too large" not in str(caught.value).lower()


def test_garbage_bytes_are_refused(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError):
        zoo.read_state_dict(path)


def test_weights_of_another_architecture_list_every_missing_unexpected_and_misshaped_key(tmp_path: Path):
    state = _tiny_state(zoo.get_model("resnet18", num_classes=2))
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    state["fc.weight"] = torch.zeros(5, 512)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError) as caught:
        zoo.load_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "w.safetensors")
    message = str(caught.value)
    assert "missing (1): layer1.0.conv1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "mis-shaped (1): fc.weight (5, 512) != (2, 512)" in message


def test_resnet50_weights_do_not_load_into_resnet18(tmp_path: Path):
    path = zoo.save_weights(zoo.get_model("resnet50", num_classes=2), tmp_path / "r50.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected \(\d+\).*more"):
        zoo.load_weights(zoo.get_model("resnet18", num_classes=2), path)


def test_an_oversized_file_is_refused_before_reading(tmp_path: Path):
    path = zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="over the limit of 1000"):
        zoo.read_state_dict(path, max_bytes=1000)


@pytest.mark.parametrize("name", ["w.bin", "w", "w.pkl"])
def test_unknown_weight_suffixes_are_refused(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(WeightsError, match="must be one of"):
        zoo.read_state_dict(tmp_path / name)


def test_a_missing_file_is_named(tmp_path: Path):
    with pytest.raises(WeightsError, match="not found"):
        zoo.read_state_dict(tmp_path / "absent.safetensors")


def test_a_pt_file_holding_something_other_than_a_state_dict_is_refused(tmp_path: Path):
    torch.save([torch.zeros(2)], tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="mapping of tensor names"):
        zoo.read_state_dict(tmp_path / "w.pt")


def test_anchor_scale_shrinks_a_detectors_anchors_without_changing_its_weights():
    plain = zoo.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, device="meta")
    small = zoo.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, device="meta", anchor_scale=0.25)
    assert small.rpn.anchor_generator.sizes[0] == (8, 16, 32, 64, 128)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    retina = zoo.get_model("retinanet_resnet50_fpn", num_classes=3, device="meta", anchor_scale=0.5)
    assert retina.anchor_generator.sizes[0] == (16, 20, 25)
    with pytest.raises(ValueError, match="no anchor generator"):
        zoo.get_model("ssd300_vgg16", num_classes=3, device="meta", anchor_scale=0.5)


@pytest.mark.parametrize("scale", [0, -1.0, 16.5, 1e308, float("inf"), float("nan"), "2"])
def test_an_anchor_scale_outside_0_to_16_is_refused_before_any_arithmetic(scale):
    with pytest.raises(ValueError, match=r"anchor_scale must be a number in \(0, 16\]"):
        zoo.get_model("fasterrcnn_resnet18_fpn", num_classes=3, device="meta", anchor_scale=scale)


def test_a_resnet18_faster_rcnn_has_a_stride_4_fpn_and_a_classifiers_backbone_shapes():
    detector = zoo.get_model("fasterrcnn_resnet18_fpn", num_classes=4, device="meta", anchor_scale=0.25)
    classifier = zoo.get_model("resnet18", num_classes=2, device="meta")
    assert detector.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert isinstance(detector.backbone.body.bn1, nn.BatchNorm2d)  # trainable from scratch, not frozen
    body = {k.removeprefix("backbone.body."): v.shape for k, v in detector.state_dict().items() if "body." in k}
    convs = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith(("conv1", "layer"))}
    assert convs.items() <= body.items()
    assert detector.roi_heads.box_predictor.cls_score.out_features == 4


def test_a_pt_zip_whose_pickle_unpacks_huge_is_refused_before_it_is_unpickled(tmp_path: Path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"N" * (40 << 20))  # 40 MB of pickle, a few KB zipped
    assert path.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match=r"pickle archive/data\.pkl unpacks to"):
        zoo.read_state_dict(path)


def test_a_pt_zip_that_unpacks_past_the_size_limit_is_refused(tmp_path: Path):
    path = tmp_path / "big.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", bytes(8 << 20))
    with pytest.raises(WeightsError, match=r"unpack to \d+ bytes, over the limit of 1048576"):
        zoo.read_state_dict(path, max_bytes=1 << 20)


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda t: t.to(torch.int64), "not floating point"),
    (lambda t: t.to(torch.bool), "not floating point"),
    (lambda t: torch.full_like(t, float("nan")), "not finite"),
    (lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("inf")), "not finite"),
])
def test_weights_must_be_floating_point_and_finite(tmp_path: Path, spoil, message):
    model = zoo.get_model("resnet18", num_classes=2)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    state["fc.weight"] = spoil(state["fc.weight"]).contiguous()
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=f"{message} .*fc.weight"):
        zoo.load_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "w.safetensors")


def test_integer_buffers_stay_integers():
    model = zoo.get_model("resnet18", num_classes=2)
    zoo.check_state_dict(zoo.get_model("resnet18", num_classes=2), model.state_dict())  # num_batches_tracked: int64
