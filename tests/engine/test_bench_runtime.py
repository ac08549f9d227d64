from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gemel_engine.bundle import ModelRecipe, save_bundle
from gemel_engine.cli import main
from gemel_engine.layers import analyze_models
from gemel_engine.modelset import ModelSet
from gemel_engine.sharing import apply_plan

ROW_KEYS = {"budget_bytes", "link_gbps", "fps", "policy", "models", "tier", "drop_rate", "mean_effective_accuracy",
            "predicted_drop_rate", "predicted_mean_effective_accuracy"}


def _tied_bundle(workload, out: Path) -> Path:
    models = ModelSet({entry.name: workload.load_model(entry) for entry in workload.queries})
    plan = analyze_models(models.as_dict()).plan()
    apply_plan(models, plan)
    recipes = {e.name: ModelRecipe(e.query.arch, e.recipe_args()) for e in workload.queries}
    return save_bundle(models, plan, out, recipes=recipes)


def test_the_runtime_benchmark_sweeps_links_and_holds_the_policy_fixed(tiny_workload, tmp_path: Path, capsys):
    bundle = _tied_bundle(tiny_workload, tmp_path / "bundle")
    out = tmp_path / "runtime.json"
    threads = torch.get_num_threads()
    code = main([
        "bench", "runtime", "--workload", str(tiny_workload.root / "workload.json"), "--bundle", str(bundle),
        "--fps", "5", "--bandwidth-gbps", "2,0.5", "--budget-fractions", "0,1", "--min-stream-seconds", "8",
        "--max-frames", "10", "--timing", "profiled", "--repeats", "1", "--out", str(out),
        "--threads", str(1 if threads > 1 else 2),
    ])
    assert torch.get_num_threads() == threads  # the caller's process keeps its own thread count
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert code == 0 and "warm-up loads charged to every scheduler's clock" in printed
    fitting = [row for row in data["rows"] if row["fits"]]
    assert {row["link_gbps"] for row in fitting} == {2.0, 0.5}
    assert {row["scheduler"] for row in fitting} >= {"time-sharing", "time-sharing-load-aware", "merged",
                                                    "merged-edf"}
    for row in fitting:
        assert set(row) >= ROW_KEYS and row["tier"] == "simulated"
        assert row["models"] == ("merged" if row["scheduler"].startswith("merged") else "unmerged")
        # At least 8 s of stream per camera: the ten test frames are replayed.
        assert sum(q["frames_total"] for q in row["queries"].values()) >= 8 * 5 * len(tiny_workload.queries)
    tightest = min(data["budgets"])
    gains = [g for g in data["gains"] if g["budget_bytes"] == tightest]
    assert gains and all({"merging_gain_earliest_deadline", "merging_gain_load_aware"} <= set(g) for g in gains)
    assert (tmp_path / "runtime-2gbps.svg").is_file() and (tmp_path / "runtime-0.5gbps.svg").is_file()


def test_the_disk_tier_is_measured_predicted_from_its_calibration_and_resumes(
    tiny_workload, tmp_path: Path, capsys, monkeypatch
):
    from gemel_engine.bench import runtime as bench_runtime

    bundle = _tied_bundle(tiny_workload, tmp_path / "bundle")
    out = tmp_path / "disk.json"
    simulated_with = []
    real_simulate = bench_runtime.simulate

    def recording_simulate(**kwargs):
        simulated_with.append(kwargs)
        return real_simulate(**kwargs)

    monkeypatch.setattr(bench_runtime, "simulate", recording_simulate)
    argv = [
        "bench", "runtime", "--workload", str(tiny_workload.root / "workload.json"), "--bundle", str(bundle),
        "--tier", "disk", "--fps", "5", "--budget-fractions", "0,1", "--min-stream-seconds", "4",
        "--max-frames", "10", "--schedulers", "time-sharing,merged-edf", "--repeats", "1", "--out", str(out),
    ]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    calibration = data["disk_calibration"]
    assert data["complete"] and data["tier"] == "disk" and not data["simulated_transfers"]
    assert calibration["reads"] > 0 and calibration["bytes_per_second"] > 0
    fitting = [row for row in data["rows"] if row["fits"]]
    assert len(fitting) == 4
    for row in fitting:
        assert set(row) >= ROW_KEYS and row["tier"] == "disk" and row["link"] == "disk"
        assert row["simulated"] is False  # the run's times are measured
        assert row["link_gbps"] * 1e9 == pytest.approx(calibration["bytes_per_second"])
    # The predictions come from the calibration and the layer profiles measured beforehand, with serial loads.
    assert len(simulated_with) == 4
    for kwargs in simulated_with:
        assert kwargs["bandwidth"].bytes_per_second == calibration["bytes_per_second"] and not kwargs["overlap"]
        for profile in kwargs["profiles"].values():
            assert all(layer.load_seconds == pytest.approx(kwargs["bandwidth"].seconds(layer.nbytes))
                       for layer in profile.layers)
    assert data["simulator_vs_measured"]["rows"] == 4
    capsys.readouterr()
    # A rerun with the same settings keeps the rows it has and runs nothing again.
    simulated_with.clear()
    assert main(argv) == 0
    assert "resuming: 4 rows" in capsys.readouterr().out and not simulated_with
    assert json.loads(out.read_text())["rows"] == data["rows"]
