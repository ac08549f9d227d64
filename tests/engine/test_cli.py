from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gemel_engine import zoo
from gemel_engine.cli import main

REPO = Path(__file__).resolve().parents[2]


ANALYSIS_KEYS = {"mode", "models", "total_param_bytes", "instances", "max_savings_bytes", "max_savings_fraction"}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_prints_the_documented_json(capsys):
    code, out, _ = _run(capsys, "analyze", "--model", "a=resnet18:2", "--model", "b=resnet34:2", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= ANALYSIS_KEYS
    assert [m["arch"] for m in data["models"]] == ["resnet18", "resnet34"]
    assert {"name", "arch", "param_bytes"} <= set(data["models"][0])
    assert data["max_savings_bytes"] == sum(i["savings_bytes"] for i in data["instances"])
    assert {"model", "layer"} == set(data["instances"][0]["members"][0])


def test_analyze_prints_a_table_with_the_optimum(capsys):
    code, out, _ = _run(capsys, "analyze", "--model", "a=vgg16", "--model", "b=vgg19", "--mode", "shape")
    assert code == 0
    assert "structural optimum:" in out and "Top 10 of" in out and "vgg19" in out


def test_analyze_merge_apply_and_inspect_work_end_to_end(capsys, tmp_path: Path):
    weights = zoo.save_weights(zoo.get_model("resnet18", num_classes=2), tmp_path / "a.safetensors")
    plan = tmp_path / "plan.json"
    models = ["--model", f"a=resnet18:2@{weights}", "--model", "b=resnet18:3"]
    assert _run(capsys, "analyze", *models, "--plan-out", str(plan))[0] == 0
    code, out, _ = _run(capsys, "merge-apply", *models, "--plan", str(plan), "--out", str(tmp_path / "bundle"))
    assert code == 0 and "saved" in out
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "bundle"), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["unmerged_param_bytes"] > info["unique_param_bytes"] > 0
    assert len(info["instances"]) == len(json.loads(plan.read_text())["instances"])
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "bundle"))
    assert "unique_param_bytes" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "--model", "a=resnet19"], "unknown architecture 'resnet19'"),
        (["analyze", "--model", "a"], "expected NAME=ARCH"),
        (["analyze", "--model", "a=resnet18:zero"], "NUM_CLASSES must be a positive integer"),
        (["analyze", "--model", "a b=resnet18"], "model name"),
        (["analyze", "--model", "a=resnet18", "--model", "a=resnet34"], "repeated: a"),
        (["merge-apply", "--model", "a=resnet18:2@/nope.safetensors", "--plan", "p", "--out", "o"], "not found"),
        (["merge-apply", "--model", "a=resnet18:2", "--plan", "/nope.json", "--out", "o"], "cannot read merge plan"),
        (["inspect", "/nope"], "neither a bundle"),
        (["bench", "nothing"], "unknown benchmark"),
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_line(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_argument_exits_with_one_line_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "gemel_engine", "inspect"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the following arguments are required: bundle (see python -m gemel_engine inspect --help)"
    ]


def test_analyze_needs_models_or_a_workload(capsys):
    code, _, err = _run(capsys, "analyze")
    assert code == 2
    assert err.strip() == "error: give either --model (repeatable) or --workload"


def test_analyze_reads_the_models_of_a_workload(capsys, tiny_workload):
    code, out, _ = _run(capsys, "analyze", "--workload", str(tiny_workload.root / "workload.json"), "--json")
    data = json.loads(out)
    assert code == 0
    assert [m["name"] for m in data["models"]] == [e.name for e in tiny_workload.queries]
    assert data["max_savings_bytes"] > 0


@pytest.mark.parametrize("command", ["analyze", "merge-apply", "inspect", "bench"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_analyze_benchmark_writes_json_that_matches_its_table(capsys, tmp_path: Path):
    out = tmp_path / "analyze.json"
    code, stdout, _ = _run(capsys, "bench", "analyze", "--mix", "3x resnet50", "--repeats", "1", "--out", str(out))
    [row] = json.loads(out.read_text())["rows"]
    assert code == 0 and "3x resnet50" in stdout
    assert row["measured_exact_savings_bytes"] == row["exact_savings_bytes"]
    assert row["shape_savings_bytes"] >= row["exact_savings_bytes"]


def _workload_copy(tiny_workload, tmp_path: Path, *, untrained: str) -> Path:
    """A copy of the tiny workload in ``tmp_path`` (weights by absolute path, its frame cache shared) whose
    query ``untrained`` has no model yet."""
    data = tiny_workload.to_json()
    for query in data["queries"]:
        query["weights"] = None if query["name"] == untrained else str(tiny_workload.weights_path(
            tiny_workload.query(query["name"])))
        if query["name"] == untrained:
            for key in ("unmerged_accuracy", "chance_accuracy", "unmerged_test", "unmerged_val_interval",
                        "chance_test", "chance_lead"):
                query.pop(key, None)
    (tmp_path / "cache").symlink_to(tiny_workload.root / "cache")
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(data))
    return path


def test_train_gives_a_query_a_model_that_beats_the_commonest_class(capsys, tiny_workload, tmp_path: Path):
    from gemel_engine.workload import Workload

    path = _workload_copy(tiny_workload, tmp_path, untrained="north_vehicles")
    code, out, err = _run(capsys, "train", "--workload", str(path), "--query", "north_vehicles",
                          "--steps", "150", "--batch-size", "32", "--device", "cpu")
    assert code == 0, err
    trained = Workload.load(path)
    entry = trained.query("north_vehicles")
    assert trained.weights_path(entry) == tmp_path / "weights" / "north_vehicles.safetensors"
    assert entry.unmerged_test is not None and entry.chance_test is not None
    assert entry.unmerged_test.accuracy > entry.chance_test.accuracy
    assert "north_vehicles" in out and "step 150 of 150" in err
    others = [e for e in trained.queries if e.name != "north_vehicles"]
    assert [e.to_json() for e in others] == [
        {**tiny_workload.query(e.name).to_json(), "weights": str(tiny_workload.weights_path(e))} for e in others
    ]


def test_train_refuses_an_unknown_query_and_a_camera_labelled_by_the_model_itself(capsys, tiny_workload, tmp_path):
    path = _workload_copy(tiny_workload, tmp_path, untrained="north_vehicles")
    code, _, err = _run(capsys, "train", "--workload", str(path), "--query", "nope")
    assert code == 2 and "no query 'nope'" in err
    data = json.loads(path.read_text())
    data["cameras"][0]["labels"] = "teacher"
    path.write_text(json.dumps(data))
    camera = tiny_workload.query("north_vehicles").query.camera
    assert data["cameras"][0]["name"] == camera
    code, _, err = _run(capsys, "train", "--workload", str(path), "--query", "north_vehicles")
    assert code == 2 and "labelled by the query's own model" in err
