"""Merge strategies side by side on one workload: savings over time with every target kept.

Each strategy runs with the same wall-clock budget on the same workload (by default the ``mix`` demo,
built once and reused); the table gives the final savings, whether every query kept its target, the
rounds run, and when each strategy reached its final savings. Every figure comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemel_engine.demo import build_demo
from gemel_engine.report import format_table, mib, percent
from gemel_engine.search import RetrainBudget, SearchConfig, list_strategies, run_search
from gemel_engine.workload import Workload


def savings_at(timeline: list[list[float]], seconds: float) -> float:
    """Return the bytes saved by ``seconds`` into a search, from its (seconds, bytes) timeline."""
    reached = [saved for at, saved in timeline if at <= seconds]
    return max(reached, default=0.0)


def time_to_reach(timeline: list[list[float]], saved_bytes: float) -> float | None:
    """Return the first time the timeline saves at least ``saved_bytes`` (None if never)."""
    return next((at for at, saved in timeline if saved >= saved_bytes and saved > 0), None)


def mean_savings(timeline: list[list[float]], seconds: float) -> float:
    """Return the time-averaged bytes saved over the first ``seconds`` (area under the savings curve / time)."""
    points = sorted((at, saved) for at, saved in timeline if at <= seconds)
    area = 0.0
    for (start, saved), (end, _) in zip(points, [*points[1:], (seconds, 0.0)], strict=True):
        area += saved * (end - start)
    return area / seconds if seconds > 0 else 0.0


def run_strategy(workload: Workload, strategy: str, budget_minutes: float, round_steps: int) -> dict[str, Any]:
    """Return one strategy's benchmark row (its search runs in a scratch directory)."""
    job = Path(tempfile.mkdtemp(prefix=f"gemel-bench-{strategy.replace('+', 'plus')}-"))
    try:
        config = SearchConfig(
            strategy=strategy, budget_minutes=budget_minutes, round_budget=RetrainBudget(max_steps=round_steps)
        )
        result = run_search(workload, job, config).to_json()
    finally:
        shutil.rmtree(job, ignore_errors=True)
    return {
        "strategy": strategy,
        "status": result["status"],
        "rounds": result["rounds"],
        "unmerged_param_bytes": result["unmerged_param_bytes"],
        "saved_param_bytes": result["unmerged_param_bytes"] - result["merged_param_bytes"],
        "savings_fraction": result["savings_fraction"],
        "all_targets_met": all(q["meets_target"] for q in result["queries"]),
        "queries": result["queries"],
        "timeline": result["timeline"],
        "seconds_to_final_savings": time_to_reach(
            result["timeline"], result["unmerged_param_bytes"] - result["merged_param_bytes"]
        ),
    }


def main(argv: Sequence[str]) -> int:
    """Run the benchmark from the command line; print a table, write JSON; return 0."""
    parser = argparse.ArgumentParser(prog="python -m gemel_engine bench merge", description=__doc__)
    parser.add_argument("--workload", type=Path, help="workload.json (default: build the 'mix' demo once)")
    parser.add_argument("--strategies", default="stem,gemel,gemel+", help="comma-separated strategies")
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="wall-clock budget per strategy")
    parser.add_argument("--round-steps", type=int, default=120, help="most retraining steps per round")
    parser.add_argument("--out", type=Path, default=Path("bench-results/merge.json"), help="JSON output file")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(strategies) - set(list_strategies()))
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(list_strategies())}")
    if args.workload is None:
        default = Path("bench-results/workloads/mix")
        built = (default / "workload.json").exists()
        workload = Workload.load(default / "workload.json") if built else build_demo("mix", default)
    else:
        workload = Workload.load(args.workload)
    rows = [run_strategy(workload, s, args.budget_minutes, args.round_steps) for s in strategies]
    budget_seconds = args.budget_minutes * 60
    checkpoints = (0.25, 0.5, 1.0)
    print(f"workload {workload.name}: {len(workload.queries)} queries; budget {args.budget_minutes:g} min per strategy")
    for row in rows:
        row["mean_saved_param_bytes"] = mean_savings(row["timeline"], budget_seconds)
    print(format_table(
        ["strategy", "rounds", *(f"saved MiB @{int(c * 100)}%" for c in checkpoints), "mean MiB", "saved %",
         "targets met", "s to final"],
        [
            [
                r["strategy"], r["rounds"],
                *(mib(savings_at(r["timeline"], c * budget_seconds)) for c in checkpoints),
                mib(r["mean_saved_param_bytes"]),
                percent(r["savings_fraction"]), "all" if r["all_targets_met"] else "NOT ALL",
                "-" if r["seconds_to_final_savings"] is None else f"{r['seconds_to_final_savings']:.0f}",
            ]
            for r in rows
        ],
    ))
    by_name = {r["strategy"]: r for r in rows}
    if "gemel" in by_name and "gemel+" in by_name and by_name["gemel"]["saved_param_bytes"]:
        ours, paper = by_name["gemel+"], by_name["gemel"]
        print(f"\ngemel+ / gemel, savings at the budget: {ours['saved_param_bytes'] / paper['saved_param_bytes']:.2f}x")
        if paper["mean_saved_param_bytes"]:
            print(f"gemel+ / gemel, mean savings over the budget: "
                  f"{ours['mean_saved_param_bytes'] / paper['mean_saved_param_bytes']:.2f}x")
        reach = time_to_reach(ours["timeline"], paper["saved_param_bytes"])
        if reach and paper["seconds_to_final_savings"]:
            print(f"time to gemel's final savings: gemel {paper['seconds_to_final_savings']:.0f} s, "
                  f"gemel+ {reach:.0f} s ({paper['seconds_to_final_savings'] / reach:.2f}x sooner)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "merge", "workload": workload.name,
                                    "budget_minutes": args.budget_minutes, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
