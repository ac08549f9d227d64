from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gemel_engine import zoo
from gemel_engine.data.frames import Box
from gemel_engine.queries import Query, Task, evaluate
from gemel_engine.train import (
    LabelledFrames,
    TrainArgs,
    TrainingError,
    _batch_loss,
    _flip_detection_target,
    draw_batch,
    fit,
    recalibrate_batchnorm,
    resolve_device,
    save_checkpoint,
    setup,
    torch_threads,
)
from tests.conftest import requires_cuda

PRESENCE = Task("presence", ("car",))


def _bright_or_dark(count: int, seed: int) -> LabelledFrames:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    base = np.where(labels[:, None, None, None] == 1, 170, 60)
    images = np.clip(base + rng.integers(-40, 40, (count, 32, 32, 3)), 0, 255).astype(np.uint8)
    return LabelledFrames(images, [int(label) for label in labels])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"lr": 0}, "lr must be positive"),
        ({"eval_every": -1}, "eval_every"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_training_arguments_are_refused(kwargs, message):
    with pytest.raises(TrainingError, match=message):
        TrainArgs(**kwargs)


def test_auto_picks_the_cpu_without_a_gpu_and_cuda_is_refused_without_one():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        TrainArgs(device="cuda")


def test_frames_and_targets_must_agree():
    with pytest.raises(TrainingError, match="3 frames but 2 targets"):
        LabelledFrames(np.zeros((3, 8, 8, 3), np.uint8), [0, 1])
    with pytest.raises(TrainingError, match="N x H x W x 3 uint8"):
        LabelledFrames(np.zeros((3, 8, 8), np.uint8), [0, 1, 0])


def test_fit_learns_a_separable_task_reports_progress_and_is_seeded():
    train, val = _bright_or_dark(256, 0), _bright_or_dark(64, 1)
    query = Query("q", "cam", "resnet18", PRESENCE)
    args = TrainArgs(steps=30, batch_size=32, eval_every=15, seed=3)
    events: list[dict] = []
    result = fit(setup(query, args), train, PRESENCE, args, val=val, progress=events.append)
    assert result.accuracy >= 0.95
    assert [e["step"] for e in events if e["type"] == "train.validated"] == [15, 30]
    assert sum(e["type"] == "train.step" for e in events) == 30
    again = fit(setup(query, args), train, PRESENCE, args, val=val)
    assert torch.equal(again.model.fc.weight, result.model.fc.weight)


def test_checkpoints_are_safetensors_that_reproduce_the_model(tmp_path: Path):
    query = Query("q", "cam", "resnet18", PRESENCE)
    model = setup(query, TrainArgs(steps=1))
    path = save_checkpoint(model, tmp_path / "ckpt" / "q.safetensors")
    restored = zoo.load_weights(query.build_model(), path).eval()
    frames = _bright_or_dark(8, 2)
    assert evaluate(model.eval(), frames.images, frames.targets, PRESENCE) == evaluate(
        restored, frames.images, frames.targets, PRESENCE
    )
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle


def test_a_flipped_detection_target_mirrors_its_boxes():
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 15.0]]), "labels": torch.tensor([1])}
    assert _flip_detection_target(target, 100)["boxes"].tolist() == [[70.0, 5.0, 90.0, 15.0]]


def test_a_detector_trains_a_few_steps_and_is_scored_with_map():
    task = Task("detection", ("car",))
    query = Query("d", "cam", "fasterrcnn_mobilenet_v3_large_320_fpn", task)
    images = np.zeros((4, 64, 64, 3), np.uint8)
    images[:, 10:30, 20:50] = 255
    targets = [task.target([_car()]) for _ in range(4)]
    frames = LabelledFrames(images, targets)
    args = TrainArgs(steps=2, batch_size=2)
    result = fit(setup(query, args, min_size=64, max_size=64), frames, task, args, val=frames)
    assert 0.0 <= result.accuracy <= 1.0


def _car():
    return Box("car", 20, 10, 50, 30)


def _cars_and_buses(count: int, seed: int, task: Task) -> LabelledFrames:
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(90, 20, (count, 64, 64, 3)), 0, 255).astype(np.uint8)
    targets = []
    for image in images:
        boxes = []
        for label, colour in (("car", (230, 40, 40)), ("bus", (40, 200, 60))):
            if rng.random() < 0.7:
                width, height = (int(v) for v in rng.integers(10, 24, 2))
                x, y = int(rng.integers(0, 64 - width)), int(rng.integers(0, 64 - height))
                image[y : y + height, x : x + width] = colour
                boxes.append(Box(label, x, y, x + width, y + height))
        targets.append(task.target(boxes))
    return LabelledFrames(images, targets)


def test_the_resnet18_faster_rcnn_learns_to_detect_from_scratch_in_a_few_dozen_steps():
    task = Task("detection", ("car", "bus"))
    args = TrainArgs(steps=40, batch_size=4, lr=0.01, optimizer="sgd")
    model = setup(
        Query("d", "cam", "fasterrcnn_resnet18_fpn", task), args, min_size=64, max_size=64, anchor_scale=0.5,
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30, box_batch_size_per_image=32, box_detections_per_img=10,
    )
    result = fit(model, _cars_and_buses(48, 0, task), task, args, val=_cars_and_buses(24, 1, task))
    assert result.accuracy >= 0.5  # mAP@0.5 of an untrained detector is 0


@requires_cuda
def test_training_on_the_gpu_uses_mixed_precision_and_still_learns():
    train, val = _bright_or_dark(256, 0), _bright_or_dark(64, 1)
    args = TrainArgs(steps=30, batch_size=32, device="cuda")
    result = fit(setup(Query("q", "cam", "resnet18", PRESENCE), args), train, PRESENCE, args, val=val)
    assert result.accuracy >= 0.95


def test_torch_threads_sets_the_count_for_its_body_and_restores_it_even_on_error():
    before = torch.get_num_threads()
    inside = []

    def fail_inside() -> None:
        with torch_threads(before + 1):
            inside.append(torch.get_num_threads())
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()
    assert inside == [before + 1] and torch.get_num_threads() == before
    with pytest.raises(TrainingError, match="positive integer"), torch_threads(0):
        pass


def _statistics_of_full_training_passes(model, frames: LabelledFrames, task: Task, seed: int) -> list[torch.Tensor]:
    """BatchNorm statistics re-estimated the way measurements once did: the model's whole training forward (its
    loss, with gradients) on the same batches ``recalibrate_batchnorm`` draws."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(3):
        _, images, targets = draw_batch(frames, 8, generator, torch.device("cpu"))
        _batch_loss(model, images, targets, task, torch.zeros(len(images), dtype=torch.bool))
    return [t.clone() for m in norms for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("arch", ["resnet18", "fasterrcnn_resnet18_fpn"])
def test_batchnorm_re_estimation_gives_the_statistics_of_whole_training_passes_without_running_the_heads(arch):
    task = Task("detection", ("car", "bus")) if arch.startswith("faster") else PRESENCE
    frames = _cars_and_buses(24, 3, task) if task.is_detection else _bright_or_dark(24, 3)
    model = setup(Query("q", "cam", arch, task), TrainArgs(steps=1), **(
        {"min_size": 64, "max_size": 64} if task.is_detection else {}))
    expected = _statistics_of_full_training_passes(model, frames, task, seed=5)
    heads_ran = []
    if task.is_detection:
        model.roi_heads.register_forward_hook(lambda *_: heads_ran.append("roi"))
        model.rpn.register_forward_hook(lambda *_: heads_ran.append("rpn"))
    recalibrate_batchnorm(model, frames, task, batches=3, batch_size=8, seed=5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    found = [t for m in norms for t in (m.running_mean, m.running_var)]
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(found, expected, strict=True))
    assert heads_ran == []
