"""Demo workloads built from synthetic cameras: ``python -m gemel_engine demo build --scale ...``.

Each scale generates its cameras, trains every query's unmerged model from scratch on its own
camera's training frames, measures it on the camera's validation frames and on its held-out test frames (the
latest frames; gaps separate the three sets) and writes ``workload.json`` with the weights beside it.

Frame sets: ``tiny`` renders 4000 frames and keeps every 4th (about 200 validation and 200 test frames per
camera); ``mix``, ``small`` and ``paper`` render 6000 and keep every 4th (at 5 fps, one frame every 0.8 s of
stream), which gives at least 300 validation and 300 test frames per camera. Neighbouring kept frames still
show the same objects, so intervals come from a block bootstrap (see ``gemel_engine.accuracy``).

- ``tiny``: 3 queries on 2 cameras, ResNet and MobileNet, 32×32 frames; a few minutes of CPU (tests).
- ``mix``: 6 classification queries on 3 cameras (ResNet-18/34, MobileNet-v2) at 32×32: the merge benchmark's
  workload, with layers shared by different subsets of models.
- ``small``: the dashboard's demo: 6 queries on 3 cameras, ResNet, MobileNet and a Faster R-CNN detector on a
  ResNet-18 FPN (whose backbone layers have the shapes of the ResNet-18 classifiers').
- ``hard``: 6 queries on 3 cameras that differ (a day street, a dark one at night, a noisy busy one in
  bad weather), whose tasks pull shared layers apart: the type of the largest object among 5 classes, counts in 5
  bins, and detection. ResNet-18 classifiers and a ResNet-18 FPN detector, so nearly everything *can* be shared:
  what *should* be is the search's question. About 20 minutes of CPU.
- ``paper``: the paper's families (ResNet-18/50/101, VGG-16, MobileNet-v3, Faster R-CNN) at 64×64, for
  benchmarks; about 40 minutes of CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemel_engine.data.sampling import SamplingSpec
from gemel_engine.errors import UsageError
from gemel_engine.fileio import write_json_atomically
from gemel_engine.queries import Query, Task, TaskKind
from gemel_engine.train import CLASSIFIER_RECIPE, DETECTOR_RECIPE, TrainArgs
from gemel_engine.workload import (
    CameraSpec,
    QueryEntry,
    Workload,
    camera_frames,
    query_from_json,
    train_unmerged,
)

Progress = Callable[[dict[str, Any]], None]
VEHICLES = ("car", "bus", "truck")
EVERYTHING = ("car", "bus", "truck", "person", "bicycle")


def _camera(
    name: str, seed: int, *, size: int, frames: int = 3000, every: int = 5, width: int = 160,
    val_fraction: float = 0.2, test_fraction: float = 0.2, time_scale: int = 20,
) -> CameraSpec:
    height = width * 3 // 4
    return CameraSpec(
        name=name,
        source=f"synthetic://{name}?seed={seed}&width={width}&height={height}&fps=5&frames={frames}"
        f"&time_scale={time_scale}&start_hour=9",
        sampling=SamplingSpec(every=every, size=(size, size)),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        gap_seconds=5.0,
    )


def _short_camera(name: str, seed: int) -> CameraSpec:
    # 1000 kept frames of 32×32 over the same 3.3 hours of daylight: about 200 validation and 200 test frames.
    return _camera(name, seed, size=32, frames=4000, every=4, time_scale=15)


def _long_camera(name: str, seed: int, *, size: int) -> CameraSpec:
    # 1500 kept frames: 300 test, 315 validation (of which the 5 s gap drops about 6) and the rest to train on.
    # Twice the frames of a short camera at half its time scale: the same 3.3 hours of daylight (9:00 to 12:20).
    return _camera(name, seed, size=size, frames=6000, every=4, val_fraction=0.21, test_fraction=0.2, time_scale=10)


def _hard_camera(name: str, seed: int, *, start_hour: float, noise: float = 1.0, density: float = 6.0) -> CameraSpec:
    # As a long camera (1500 kept frames of 64×64 over 3.3 hours), with its own light, weather and traffic.
    camera = _long_camera(name, seed, size=64)
    source = camera.source.replace("&start_hour=9", f"&start_hour={start_hour:g}&noise={noise:g}&density={density:g}")
    return dataclasses.replace(camera, source=source)


def _long_cameras(*, size: int) -> tuple[CameraSpec, ...]:
    return tuple(_long_camera(name, seed, size=size) for name, seed in (("north", 3), ("east", 1), ("south", 7)))


def _at_64(kind: TaskKind, classes: tuple[str, ...], **options: Any) -> Task:
    # Boxes under 4×4 pixels of a 64×64 frame are not visible, so they do not count as objects there.
    return Task(kind, classes, min_box_area=16, **options)


def _query(name: str, camera: str, arch: str, task: Task, **builder_args: Any) -> QueryEntry:
    return QueryEntry(Query(name, camera, arch, task), builder_args=builder_args)


@dataclass(frozen=True)
class DemoScale:
    """A demo workload to generate: cameras, queries and how each query's model is trained."""

    name: str
    cameras: tuple[CameraSpec, ...]
    queries: tuple[QueryEntry, ...]
    # Training arguments per architecture.
    train: dict[str, TrainArgs]

    def train_args(self, entry: QueryEntry) -> TrainArgs:
        """Return the training arguments of a query's architecture."""
        return self.train[entry.query.arch]


_classifier = CLASSIFIER_RECIPE
# The tests build ``tiny`` once per run: its ResNet-18s learn presence at 32×32 in a fifth of the classifier recipe's
# frames (the counting MobileNet needs the full recipe to beat the commonest class).
_quick_classifier = TrainArgs(steps=150, batch_size=32, lr=1e-3)
_detector = DETECTOR_RECIPE
# Small frames hold small objects: quarter-size anchors, and fewer proposals so a CPU step stays under a second.
_small_detector_args = {
    "min_size": 128, "max_size": 128, "anchor_scale": 0.25, "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 64, "box_detections_per_img": 20,
}

SCALES: dict[str, DemoScale] = {
    "tiny": DemoScale(
        name="tiny",
        cameras=(_short_camera("north", 3), _short_camera("east", 1)),
        queries=(
            _query("north_vehicles", "north", "resnet18", Task("presence", VEHICLES)),
            _query("north_traffic", "north", "mobilenet_v2", Task("count", VEHICLES, count_edges=(1, 2))),
            _query("east_vehicles", "east", "resnet18", Task("presence", VEHICLES)),
        ),
        train={"resnet18": _quick_classifier, "mobilenet_v2": _classifier},
    ),
    "mix": DemoScale(
        name="mix",
        cameras=_long_cameras(size=32),
        queries=(
            _query("north_vehicles", "north", "resnet18", Task("presence", VEHICLES)),
            _query("north_traffic", "north", "resnet34", Task("count", VEHICLES, count_edges=(1, 2))),
            _query("east_vehicles", "east", "resnet18", Task("presence", VEHICLES)),
            _query("east_traffic", "east", "resnet34", Task("count", VEHICLES, count_edges=(1, 2))),
            _query("south_vehicles", "south", "mobilenet_v2", Task("presence", VEHICLES)),
            _query("south_traffic", "south", "mobilenet_v2", Task("count", VEHICLES, count_edges=(1, 2))),
        ),
        train={"resnet18": _classifier, "resnet34": _classifier, "mobilenet_v2": _classifier},
    ),
    "small": DemoScale(
        name="small",
        cameras=_long_cameras(size=64),
        queries=(
            _query("north_vehicles", "north", "resnet18", _at_64("presence", VEHICLES)),
            _query("north_traffic", "north", "resnet34", _at_64("count", VEHICLES, count_edges=(1, 2))),
            _query("east_vehicles", "east", "resnet18", _at_64("presence", VEHICLES)),
            _query("east_cars", "east", "mobilenet_v2", _at_64("presence", ("car",))),
            _query("south_vehicles", "south", "mobilenet_v2", _at_64("presence", VEHICLES)),
            _query(
                "south_detect", "south", "fasterrcnn_resnet18_fpn",
                _at_64("detection", VEHICLES), **_small_detector_args,
            ),
        ),
        train={
            "resnet18": dataclasses.replace(_classifier, steps=300),
            "resnet34": dataclasses.replace(_classifier, steps=300),
            "mobilenet_v2": dataclasses.replace(_classifier, steps=300),
            "fasterrcnn_resnet18_fpn": _detector,
        },
    ),
    "hard": DemoScale(
        name="hard",
        cameras=(
            _hard_camera("day", 3, start_hour=9),
            _hard_camera("night", 5, start_hour=18.5, noise=2.0),
            _hard_camera("storm", 9, start_hour=13, noise=5.0, density=12.0),
        ),
        queries=(
            _query("day_type", "day", "resnet18", _at_64("type", EVERYTHING)),
            _query("day_count", "day", "resnet18", _at_64("count", EVERYTHING, count_edges=(1, 2, 3, 4))),
            _query("night_type", "night", "resnet18", _at_64("type", EVERYTHING)),
            _query("night_count", "night", "resnet18", _at_64("count", VEHICLES, count_edges=(1, 2, 3, 4))),
            _query("storm_type", "storm", "resnet18", _at_64("type", EVERYTHING)),
            _query(
                "storm_detect", "storm", "fasterrcnn_resnet18_fpn",
                _at_64("detection", VEHICLES), **_small_detector_args,
            ),
        ),
        # At the small scale's 0.02 the detector's loss became NaN at step 24 on the noisy, busy storm camera.
        train={"resnet18": dataclasses.replace(_classifier, steps=300),
               "fasterrcnn_resnet18_fpn": dataclasses.replace(_detector, lr=0.01)},
    ),
    "paper": DemoScale(
        name="paper",
        cameras=_long_cameras(size=64),
        queries=(
            _query("north_vehicles", "north", "resnet18", _at_64("presence", VEHICLES)),
            _query("north_traffic", "north", "resnet50", _at_64("count", VEHICLES, count_edges=(1, 2))),
            _query("east_vehicles", "east", "resnet101", _at_64("presence", VEHICLES)),
            _query("east_cars", "east", "vgg16", _at_64("presence", ("car",))),
            _query("south_vehicles", "south", "mobilenet_v3_large", _at_64("presence", VEHICLES)),
            _query(
                "south_detect", "south", "fasterrcnn_resnet50_fpn",
                _at_64("detection", VEHICLES), **_small_detector_args,
            ),
        ),
        # Sized to about 40 minutes of this 2-core CPU (measured steps at 64×64: VGG-16 2.1 s per batch of 32,
        # ResNet-101 2.1 s and ResNet-50 1.5 s per batch of 64, the detector 1.6 s per batch of 8): the deepest
        # classifiers take fewer steps, VGG-16 (no BatchNorm) half-size batches at a tenth of the learning rate.
        train={
            "resnet18": _classifier,
            "resnet50": _classifier,
            "resnet101": dataclasses.replace(_classifier, steps=200),
            "vgg16": dataclasses.replace(_classifier, batch_size=32, lr=1e-4),
            "mobilenet_v3_large": _classifier,
            "fasterrcnn_resnet50_fpn": dataclasses.replace(_detector, lr=0.01),
        },
    ),
}


CHECKPOINT_NAME = "build-checkpoint.json"
WORKLOAD_NAME = "workload.json"


def _recipe_key(spec: DemoScale, entry: QueryEntry) -> str:
    """Return what a trained model depends on (its query, cameras and training), as one comparable string."""
    camera = next(c for c in spec.cameras if c.name == entry.query.camera)
    return json.dumps({"query": entry.to_json(), "camera": camera.to_json(),
                       "train": spec.train_args(entry).to_json()}, sort_keys=True)


def _load_checkpoint(path: Path) -> dict[str, dict[str, Any]]:
    """Return recipe key → trained query JSON from a build checkpoint (nothing when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
        return {str(item["recipe"]): dict(item["query"]) for item in data["trained"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# A training step is reported every this many steps (and at the last one).
STEP_EVERY = 10


def _step_relay(entry: QueryEntry, progress: Progress | None) -> Progress | None:
    """Return a training-progress callback that reports ``demo.step`` (steps done, seconds, an estimate of the
    seconds left) every ``STEP_EVERY`` steps, or None without ``progress``."""
    if progress is None:
        return None
    started = time.perf_counter()

    def relay(event: dict[str, Any]) -> None:
        if event.get("type") != "train.step":
            return
        step, steps = int(event["step"]), int(event["steps"])
        if step % STEP_EVERY and step != steps:
            return
        seconds = time.perf_counter() - started
        progress({"type": "demo.step", "query": entry.name, "arch": entry.query.arch, "step": step, "steps": steps,
                  "seconds": seconds, "seconds_left": seconds / step * (steps - step)})

    return relay


def build_demo(scale: str, out_dir: str | Path, *, progress: Progress | None = None) -> Workload:
    """Generate the cameras, train every query's unmerged model and write ``workload.json`` in ``out_dir``.

    The build resumes: after each model, ``build-checkpoint.json`` records it (with what it was trained from), so
    a build run again in the same folder keeps every model whose recipe is unchanged and whose weights are there.

    Returns:
        The written workload, with each query's weights, unmerged accuracy and chance accuracy.

    Raises:
        UsageError: ``scale`` is not one of ``SCALES``.
    """
    if scale not in SCALES:
        raise UsageError(f"unknown demo scale {scale!r}; known: {', '.join(SCALES)}")
    spec = SCALES[scale]
    out_dir = Path(out_dir).resolve()
    workload = Workload(spec.name, spec.cameras, spec.queries, out_dir)
    frames = {camera.name: camera_frames(workload, camera) for camera in spec.cameras}
    checkpoint = out_dir / CHECKPOINT_NAME
    done_before = _load_checkpoint(checkpoint)
    trained: list[QueryEntry] = []
    records: list[dict[str, Any]] = []
    for entry in spec.queries:
        recipe = _recipe_key(spec, entry)
        kept = done_before.get(recipe)
        if kept is not None and kept.get("weights") and (out_dir / kept["weights"]).is_file():
            trained.append(query_from_json(kept))
            records.append({"recipe": recipe, "query": kept})
            if progress is not None:
                progress({"type": "demo.kept", "query": entry.name, "arch": entry.query.arch})
            continue
        args = spec.train_args(entry)
        if progress is not None:
            progress({"type": "demo.training", "query": entry.name, "arch": entry.query.arch, "steps": args.steps})
        done, result, labelled = train_unmerged(
            workload, entry, frames[entry.query.camera], args, progress=_step_relay(entry, progress)
        )
        trained.append(done)
        records.append({"recipe": recipe, "query": done.to_json()})
        write_json_atomically(checkpoint, {"scale": spec.name, "trained": records})
        if progress is not None:
            progress({
                "type": "demo.trained", "query": entry.name, "arch": entry.query.arch, "entry": done.to_json(),
                "accuracy": done.unmerged_accuracy, "chance": done.chance_accuracy, "seconds": result.seconds,
                # What one training frame cost here (forward and backward): the pace a merge retrains it at.
                "train_frame_seconds": result.seconds / (args.steps * args.batch_size),
                "test": done.unmerged_test.to_json() if done.unmerged_test else None,
                "train_frames": len(labelled.train), "val_frames": len(labelled.val), "test_frames": len(labelled.test),
            })
    workload = workload.with_queries(tuple(trained))
    workload.save(out_dir / WORKLOAD_NAME)
    return workload


def built_demo(out_dir: str | Path) -> Workload | None:
    """Return the workload a finished ``build_demo`` left in ``out_dir``, or None when no build finished there.

    Raises:
        WorkloadError: the folder holds a workload file that cannot be read.
    """
    path = Path(out_dir) / WORKLOAD_NAME
    return Workload.load(path) if path.is_file() else None
