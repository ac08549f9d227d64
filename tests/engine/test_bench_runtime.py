from __future__ import annotations

import json
from pathlib import Path

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
    code = main([
        "bench", "runtime", "--workload", str(tiny_workload.root / "workload.json"), "--bundle", str(bundle),
        "--fps", "5", "--bandwidth-gbps", "2,0.5", "--budget-fractions", "0,1", "--min-stream-seconds", "8",
        "--max-frames", "10", "--timing", "profiled", "--repeats", "1", "--out", str(out),
    ])
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
