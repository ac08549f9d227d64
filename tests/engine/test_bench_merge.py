from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemel_engine.bench.merge import mean_savings, savings_at, summarise, time_to_reach
from gemel_engine.cli import main

TIMELINE = [[0.0, 0.0], [10.0, 100.0], [30.0, 300.0]]


def test_savings_at_a_time_are_the_latest_reached_by_then():
    assert [savings_at(TIMELINE, t) for t in (5, 10, 29, 60)] == [0.0, 100.0, 100.0, 300.0]


def test_mean_savings_is_the_area_under_the_step_curve_over_the_budget():
    # 0 for 10 s, 100 for 20 s, 300 for 30 s over a 60 s budget.
    assert mean_savings(TIMELINE, 60) == pytest.approx((100 * 20 + 300 * 30) / 60)
    assert mean_savings(TIMELINE, 20) == pytest.approx(100 * 10 / 20)


def test_time_to_reach_finds_the_first_time_enough_is_saved():
    assert time_to_reach(TIMELINE, 150) == 30.0
    assert time_to_reach(TIMELINE, 1000) is None


def test_a_summary_takes_medians_over_runs():
    runs = [
        {"strategy": "gemel", "rounds": r, "timeline": TIMELINE, "savings_fraction": 0.5, "all_targets_met": True,
         "seconds_to_final_savings": s, "test_targets_met": met, "test_targets_total": 3, "val_test_gaps": gaps}
        for r, s, met, gaps in ((3, 30.0, 3, [0.01]), (5, 10.0, 2, [0.03, -0.01]), (4, 20.0, 3, []))
    ]
    summary = summarise(runs, 60)
    assert summary["rounds"] == 4 and summary["seconds_to_final_savings"] == 20.0
    assert summary["saved_at"]["0.25"] == 100.0
    assert summary["test_targets_met_share"] == pytest.approx(8 / 9)
    assert summary["mean_val_test_gap"] == pytest.approx(0.01)


def test_the_merge_benchmark_runs_strategies_side_by_side(tiny_workload, tmp_path: Path, capsys):
    out = tmp_path / "merge.json"
    code = main([
        "bench", "merge", "--workload", str(tiny_workload.root / "workload.json"), "--strategies", "gemel,gemel+",
        "--repeats", "1", "--budget-minutes", "2", "--out", str(out),
    ])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert code == 0 and "gemel+" in printed
    assert [s["strategy"] for s in data["summary"]] == ["gemel", "gemel+"]
    assert all(s["all_targets_met"] for s in data["summary"])
    assert data["runs"]["gemel@point"][0]["saved_param_bytes"] > 0  # runs are keyed by strategy@acceptance
    log = data["runs"]["gemel@point"][0]["round_log"]
    assert log[0]["type"] == "round.started" and log[0]["trial_models"]
    assert any(entry["type"] == "round.finished" and entry["accepted"] for entry in log)
    for summary in data["summary"]:
        assert 0.0 <= summary["test_targets_met_share"] <= 1.0
        saved = any(run["saved_param_bytes"] > 0 for run in data["runs"][f"{summary['strategy']}@point"])
        assert (summary["mean_val_test_gap"] is not None) == saved  # a gap for every accepted configuration
    assert "test targets met" in printed and "val-test gap" in printed
    assert out.with_suffix(".svg").read_text().count("<polyline") == 2  # one savings curve per run

    # Run again (as after an interruption): the finished runs are kept, none is run again.
    assert main([
        "bench", "merge", "--workload", str(tiny_workload.root / "workload.json"), "--strategies", "gemel,gemel+",
        "--repeats", "1", "--budget-minutes", "2", "--out", str(out),
    ]) == 0
    again = capsys.readouterr().out
    assert "kept gemel@point run 1" in again and "kept gemel+@point run 1" in again
    assert json.loads(out.read_text())["runs"] == data["runs"]


def test_the_savings_plot_draws_each_run_as_steps_held_to_the_end_of_the_budget():
    from gemel_engine.bench.merge import savings_plot

    run = {"timeline": [[10.0, 0.0], [20.0, 2 * 1024 * 1024], [40.0, 4 * 1024 * 1024]],
           "saved_param_bytes": 4 * 1024 * 1024}
    svg = savings_plot({"gemel@point": [run, run], "gemel+@point": [run]}, 60.0, "w <&> title")
    assert svg.count("<polyline") == 3 and svg.count('stroke-dasharray="5,3"') == 1  # the second repeat is dashed
    assert "w &lt;&amp;&gt; title" in svg and "gemel+@point" in svg
    curve = svg.split('<polyline')[1].split('points="')[1].split('"')[0].split()
    xs = [float(point.split(",")[0]) for point in curve]
    assert xs == sorted(xs) and xs[-1] == 544.0  # a step curve, held to the end of the budget (the axis' end)


def test_acceptance_rules_are_parsed_and_named_for_each_contender():
    from gemel_engine.bench.merge import contender_name, parse_confidences

    assert parse_confidences("0.9, point") == [0.9, None]
    assert [contender_name("gemel+", c) for c in (0.9, None)] == ["gemel+@90%", "gemel+@point"]
    for bad in ("1.0", "0.4", "0.9,0.9", "often"):
        with pytest.raises(ValueError):
            parse_confidences(bad)


def test_warm_starts_are_parsed_and_a_strategys_own_is_run_once_under_its_plain_name():
    from gemel_engine.bench.merge import contender_name, contenders_of, parse_warm_starts

    assert parse_warm_starts("own, first") == [None, "first"]
    for bad in ("own,own", "zero", "first,first"):
        with pytest.raises(ValueError):
            parse_warm_starts(bad)
    # Both strategies start from the first member's weights: asking for own and first runs each of them once.
    assert contenders_of(["gemel", "gemel+"], parse_warm_starts("own,first"), [None]) == [
        ("gemel", None, None), ("gemel+", None, None)]
    contenders = contenders_of(["gemel", "gemel+"], parse_warm_starts("mean,first"), [0.9])
    assert contenders == [("gemel", "mean", 0.9), ("gemel", None, 0.9), ("gemel+", "mean", 0.9), ("gemel+", None, 0.9)]
    assert [contender_name(s, c, w) for s, w, c in contenders] == [
        "gemel/mean@90%", "gemel@90%", "gemel+/mean@90%", "gemel+@90%"]


def test_each_gemel_plus_contender_is_paired_with_gemels_own_warm_start_or_else_the_same_one():
    from gemel_engine.bench.merge import contenders_of, parse_warm_starts, ratio_pairs

    both = contenders_of(["gemel", "gemel+"], parse_warm_starts("own,mean"), [None])
    assert ratio_pairs(both) == [("gemel+@point", "gemel@point"), ("gemel+/mean@point", "gemel@point")]
    only_mean = contenders_of(["gemel", "gemel+"], parse_warm_starts("mean"), [None])
    assert ratio_pairs(only_mean) == [("gemel+/mean@point", "gemel/mean@point")]
    assert ratio_pairs(contenders_of(["gemel+"], [None], [None])) == []


def test_the_merge_command_refuses_an_acceptance_confidence_outside_its_range(capsys, tmp_path):
    from gemel_engine.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["merge", "--workload", str(tmp_path / "w.json"), "--out", str(tmp_path / "j"),
              "--accept-confidence", "1.2"])
    assert exited.value.code == 2
    assert "expected 'point' or a confidence in [0.5, 1)" in capsys.readouterr().err
