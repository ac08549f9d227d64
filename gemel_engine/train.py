"""Training a query's unmerged model in plain steps: ``setup → fit → validate``.

Seeds are fixed, the device is chosen automatically (CUDA when present), mixed precision is used on
CUDA, progress is reported through a callback and checkpoints are written as safetensors.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from gemel_engine import zoo
from gemel_engine.errors import GemelError
from gemel_engine.queries import Query, Target, Task, evaluate, images_to_tensor

Progress = Callable[[dict[str, Any]], None]


class TrainingError(GemelError):
    """Training that cannot start or go on: bad arguments, empty or mismatched data."""


@dataclass(frozen=True)
class TrainArgs:
    """How to train one model; checked on creation."""

    # Optimizer steps in all.
    steps: int = 120
    # Frames per step.
    batch_size: int = 64
    # Peak learning rate (cosine decay to 5% of it, after a 5% warm-up).
    lr: float = 2e-3
    # Weight decay.
    weight_decay: float = 1e-4
    # "adamw", or "sgd" (momentum 0.9, as detectors are usually trained).
    optimizer: str = "adamw"
    # Validate every this many steps (0: only at the end).
    eval_every: int = 0
    # Seed of the weight initialisation and of batch sampling.
    seed: int = 0
    # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # Mixed precision; None turns it on exactly when training on CUDA.
    amp: bool | None = None
    # Random horizontal flips of training frames (and their boxes).
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise TrainingError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise TrainingError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise TrainingError("lr must be positive")
        if self.optimizer not in ("adamw", "sgd"):
            raise TrainingError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        resolve_device(self.device)

    def to_json(self) -> dict[str, Any]:
        """Return the arguments as JSON-ready data."""
        return dataclasses.asdict(self)


def make_optimizer(parameters: Iterable[nn.Parameter], args: TrainArgs) -> torch.optim.Optimizer:
    """Return the optimizer ``args`` asks for over ``parameters`` (each shared tensor listed once)."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


def resolve_device(name: torch.device | str) -> torch.device:
    """Return the torch device for ``name`` ("auto" picks CUDA when available, else the CPU); the engine's one
    device resolver (training, search and runtime alike).

    Raises:
        TrainingError: an unknown device name, a device other than cpu or cuda, or CUDA asked for where there is
            none (the runtime's Executor turns it into a RuntimeConfigError).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise TrainingError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} asked for, but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(f"device must be cpu or cuda, got {name!r}")
    return device


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the ``with`` body on ``count`` torch CPU threads, then restore the process's earlier count (torch's
    thread count is process-wide: a caller sharing the process, a test suite, keeps its own).

    Raises:
        TrainingError: ``count`` is not a positive integer.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TrainingError(f"torch threads must be a positive integer, got {count!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# How an unmerged model is trained from scratch when nothing says otherwise (the demo workloads' recipes).
CLASSIFIER_RECIPE = TrainArgs(steps=250, batch_size=64, lr=1e-3)
DETECTOR_RECIPE = TrainArgs(steps=300, batch_size=8, lr=0.02, optimizer="sgd")


def default_recipe(task: Task) -> TrainArgs:
    """Return the training arguments a model for ``task`` gets by default: ``DETECTOR_RECIPE`` for detection,
    ``CLASSIFIER_RECIPE`` otherwise."""
    return DETECTOR_RECIPE if task.is_detection else CLASSIFIER_RECIPE


@dataclass(frozen=True, eq=False)
class LabelledFrames:
    """Frames (N×H×W×3 uint8) with one target per frame."""

    images: np.ndarray
    targets: Sequence[Target]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or self.images.shape[-1] != 3:
            raise TrainingError(f"images must be N x H x W x 3 uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.images) != len(self.targets):
            raise TrainingError(f"{len(self.images)} frames but {len(self.targets)} targets")
        if len(self.images) == 0:
            raise TrainingError("no frames to train or validate on")

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class TrainResult:
    """What training produced."""

    model: nn.Module
    # Accuracy metric on the validation frames after the last step.
    accuracy: float
    # One entry per validation: {"step", "accuracy", "loss", "seconds"}.
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def setup(query: Query, args: TrainArgs, **builder_args: Any) -> nn.Module:
    """Return the query's untrained model, seeded by ``args.seed``, on the training device."""
    torch.manual_seed(args.seed)
    return query.build_model(**builder_args).to(resolve_device(args.device))


def _learning_rate(step: int, args: TrainArgs) -> float:
    warmup = max(1, args.steps // 20)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _flip_detection_target(target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return {**target, "boxes": boxes}


def _batch_loss(
    model: nn.Module, images: torch.Tensor, targets: list[Target], task: Task, flips: torch.Tensor
) -> torch.Tensor:
    if flips.any():
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    if not task.is_detection:
        labels = torch.tensor(targets, dtype=torch.int64, device=images.device)
        return nn.functional.cross_entropy(model(images), labels)
    width = images.shape[-1]
    device_targets = []
    for target, flipped in zip(targets, flips.tolist(), strict=True):
        if not isinstance(target, dict):
            raise TrainingError("detection targets must be dicts of boxes and labels")
        moved = _flip_detection_target(target, width) if flipped else target
        device_targets.append({key: value.to(images.device) for key, value in moved.items()})
    losses = model(list(images), device_targets)
    return sum(losses.values())  # type: ignore[return-value]


def joint_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, list[Target]],
    task: Task,
    *,
    generator: torch.Generator,
    augment: bool,
) -> torch.Tensor:
    """Return the loss of ``model`` on one batch (with random flips when ``augment``), ready for backward."""
    images, targets = batch
    flips = (
        torch.rand(len(images), generator=generator) < 0.5 if augment else torch.zeros(len(images), dtype=torch.bool)
    ).to(images.device)
    return _batch_loss(model, images, targets, task, flips)


def draw_batch(
    frames: LabelledFrames,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    *,
    images: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """Return a random batch of ``frames``: the picked positions, their images on ``device`` and targets.

    ``images`` is the frames already converted to a float tensor (see ``images_to_tensor``), if at hand.
    """
    picks = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=generator)
    batch = images[picks] if images is not None else images_to_tensor(frames.images[picks.numpy()], "cpu")
    return picks, batch.to(device, non_blocking=True), [frames.targets[int(i)] for i in picks]


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _normalisation_pass(model: nn.Module, images: torch.Tensor, targets: list[Target], task: Task) -> None:
    """Run ``model`` in training mode on one batch as far as its normalisation layers reach: a torchvision
    detector's input transform and backbone (what its training-mode forward feeds the backbone) when the backbone
    holds them all, else the model's training forward (its loss)."""
    if task.is_detection and isinstance(model, GeneralizedRCNN):
        in_backbone = {id(m) for m in model.backbone.modules()}
        if all(id(m) in in_backbone for m in model.modules() if isinstance(m, _NORMS)):
            image_list, _ = model.transform(list(images))
            model.backbone(image_list.tensors)
            return
    _batch_loss(model, images, targets, task, torch.zeros(len(images), dtype=torch.bool, device=images.device))


# Batches of BatchNorm re-estimation (of ``batch_size`` frames each) unless a caller asks for another count.
CALIBRATION_BATCHES = 8


def recalibrate_batchnorm(
    model: nn.Module,
    frames: LabelledFrames,
    task: Task,
    *,
    batches: int = CALIBRATION_BATCHES,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Recompute every BatchNorm layer's running statistics from ``frames`` with the current weights.

    Running statistics are moving averages over weights that changed during training; after short or
    fast training (and after weights are shared or retrained) they lag behind and wreck eval-mode
    accuracy. This re-estimates them as a plain average over ``batches`` random batches.

    The passes run without gradients and only as far as the normalisation layers reach (a torchvision
    detector's input transform and backbone; its heads hold none), so the statistics equal those of a
    training-mode pass of the whole model at a fraction of the cost.
    """
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for _ in range(batches):
                _, images, targets = draw_batch(frames, batch_size, generator, device)
                _normalisation_pass(model, images, targets, task)
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        model.train(was_training)


def fit(
    model: nn.Module,
    train: LabelledFrames,
    task: Task,
    args: TrainArgs,
    *,
    val: LabelledFrames | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` for ``args.steps`` steps; validate on ``val`` as ``eval_every`` says.

    Returns:
        The trained model (in eval mode), its final validation accuracy (NaN without ``val``) and history.

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    device = next(model.parameters()).device
    use_amp = args.amp if args.amp is not None else device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda")
    optimizer = make_optimizer(model.parameters(), args)
    generator = torch.Generator().manual_seed(args.seed)
    all_images = images_to_tensor(train.images, "cpu")
    if device.type == "cuda":
        all_images = all_images.pin_memory()
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    accuracy = float("nan")
    loss_value = float("nan")
    model.train()
    for step in range(args.steps):
        _, images, targets = draw_batch(train, args.batch_size, generator, device, images=all_images)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, args)
        with torch.autocast(device.type, enabled=use_amp):
            loss = joint_step(model, (images, targets), task, generator=generator, augment=args.augment)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss.detach())} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())
        if progress is not None:
            progress({"type": "train.step", "step": step + 1, "steps": args.steps, "loss": loss_value})
        last = step + 1 == args.steps
        if val is not None and (last or (args.eval_every and (step + 1) % args.eval_every == 0)):
            recalibrate_batchnorm(model, train, task, batch_size=args.batch_size, seed=args.seed + step)
            accuracy = validate(model, val, task)
            elapsed = time.perf_counter() - started
            entry = {"step": step + 1, "accuracy": accuracy, "loss": loss_value, "seconds": elapsed}
            history.append(entry)
            if progress is not None:
                progress({"type": "train.validated", **entry})
            model.train()
    if val is None:
        recalibrate_batchnorm(model, train, task, batch_size=args.batch_size, seed=args.seed)
    model.eval()
    return TrainResult(model, accuracy, history, time.perf_counter() - started)


def validate(model: nn.Module, val: LabelledFrames, task: Task) -> float:
    """Return ``model``'s accuracy metric (top-1 or mAP@0.5) on the validation frames."""
    return evaluate(model, val.images, val.targets, task)


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights as safetensors at ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return zoo.save_weights(model, path)
