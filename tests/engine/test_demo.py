from __future__ import annotations

import pytest

from gemel_engine import zoo
from gemel_engine.cli import main
from gemel_engine.demo import SCALES
from gemel_engine.queries import evaluate
from gemel_engine.workload import Workload, camera_frames, query_data


def test_the_tiny_demo_has_three_queries_on_two_cameras_and_two_families(tiny_workload):
    assert len(tiny_workload.queries) >= 3
    assert len(tiny_workload.cameras) >= 2
    assert len({zoo.get_spec(e.query.arch).family for e in tiny_workload.queries}) >= 2


def test_every_unmerged_model_clearly_beats_always_answering_the_commonest_class(tiny_workload):
    for entry in tiny_workload.queries:
        assert entry.unmerged_accuracy >= entry.chance_accuracy + 0.1, entry.name


def test_the_saved_workload_reproduces_each_recorded_accuracy(tiny_workload):
    workload = Workload.load(tiny_workload.root / "workload.json")
    for entry in workload.queries:
        frames = camera_frames(workload, workload.camera(entry.query.camera))
        _, val = query_data(workload, entry, frames)
        accuracy = evaluate(workload.load_model(entry), val.images, val.targets, entry.query.task)
        assert accuracy == pytest.approx(entry.unmerged_accuracy, abs=1e-3), entry.name


def test_an_unknown_demo_scale_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "build", "--scale", "huge", "--out", str(tmp_path)])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_the_larger_scales_mix_three_families_and_a_detector_that_fits_its_task(scale):
    spec = SCALES[scale]
    assert len(spec.queries) >= 6
    assert len(spec.cameras) >= 3
    families = {zoo.get_spec(e.query.arch).family for e in spec.queries}
    assert len(families) >= 3
    assert "fasterrcnn" in families
    for entry in spec.queries:
        model = entry.query.build_model(device="meta", **entry.builder_args)
        assert spec.train_args(entry).steps > 0
        if entry.query.task.is_detection:
            assert model.roi_heads.box_predictor.cls_score.out_features == len(entry.query.task.classes) + 1


def test_the_paper_scale_has_the_papers_families():
    archs = {entry.query.arch for entry in SCALES["paper"].queries}
    assert {"resnet18", "resnet50", "resnet101", "vgg16", "mobilenet_v3_large", "fasterrcnn_resnet50_fpn"} <= archs
