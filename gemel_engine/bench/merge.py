"""Merge strategies side by side on one workload: savings over time with every target kept.

Each strategy runs with the same wall-clock budget on the same workload (by default the ``mix`` demo,
built once and reused); the table gives the final savings, the share of queries whose accuracy on held-out
test frames (never seen by training or the search) keeps its target, the val–test gap of the accepted
configurations, the rounds run, and when each strategy reached its final savings. Every figure comes from this
one run.

The val–test gap is, per accepted configuration and query, the accuracy kept relative to the unmerged model on
validation frames (what the search decided on) minus the same on test frames, in units of the target (a
0.95× target allows a drop of 0.05): a positive gap is how much the search's own figure flatters the merge.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemel_engine.accuracy import parse_accept_confidence
from gemel_engine.bench import registered_names
from gemel_engine.bench.svg import Series, line_chart
from gemel_engine.bundle import inspect_bundle
from gemel_engine.demo import build_demo
from gemel_engine.errors import GemelError
from gemel_engine.report import MIB, format_table, mib, percent
from gemel_engine.search import (
    DEFAULT_ACCEPT_CONFIDENCE,
    RetrainBudget,
    SearchConfig,
    bundle_evaluation,
    get_strategy,
    list_strategies,
    run_search,
    saved_configs,
)
from gemel_engine.sharing import WARM_STARTS, WarmStart
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


def _rule_name(accept_confidence: float | None) -> str:
    return "point" if accept_confidence is None else f"{accept_confidence:.0%}"


def contender_name(strategy: str, accept_confidence: float | None, warm_start: WarmStart | None = None) -> str:
    """Return a contender's label: the strategy, its warm start when not the strategy's own, and its acceptance
    rule (``gemel+@90%``, ``gemel@point``, ``gemel+/first@point``)."""
    variant = "" if warm_start is None else f"/{warm_start}"
    return f"{strategy}{variant}@{_rule_name(accept_confidence)}"


def parse_warm_starts(text: str) -> list[WarmStart | None]:
    """Return the warm starts of a comma-separated list: ``own`` (None: each strategy's own), ``first``, ``mean``.

    Raises:
        ValueError: an entry is none of those, or an entry repeats.
    """
    values: list[WarmStart | None] = []
    for part in (part.strip() for part in text.split(",")):
        if part != "own" and part not in WARM_STARTS:
            raise ValueError(f"{part!r}: list own, {', '.join(WARM_STARTS)}")
        values.append(None if part == "own" else part)  # type: ignore[arg-type]
    if len(set(values)) != len(values):
        raise ValueError(f"{text!r}: list distinct warm starts")
    return values


def contenders_of(strategies: Sequence[str], warm_starts: Sequence[WarmStart | None],
                  confidences: Sequence[float | None]) -> list[tuple[str, WarmStart | None, float | None]]:
    """Return every (strategy, warm start, acceptance rule) to run, in that order; a warm start that is the
    strategy's own is its default (None), so no contender runs twice."""
    contenders: list[tuple[str, WarmStart | None, float | None]] = []
    for strategy in strategies:
        own = get_strategy(strategy).options.warm_start
        for warm_start in warm_starts:
            for confidence in confidences:
                contender = (strategy, None if warm_start == own else warm_start, confidence)
                if contender not in contenders:
                    contenders.append(contender)
    return contenders


def ratio_pairs(contenders: Sequence[tuple[str, WarmStart | None, float | None]]) -> list[tuple[str, str]]:
    """Return the (gemel+ contender, gemel contender) names whose paired ratios a benchmark reports: every gemel+
    contender against gemel under the same acceptance rule, with gemel's own warm start when it ran, else with the
    same warm start; a gemel+ contender without such a gemel one is left out."""
    names = {contender_name(s, c, w) for s, w, c in contenders}
    pairs = []
    for strategy, warm_start, confidence in contenders:
        if strategy != "gemel+":
            continue
        papers = [contender_name("gemel", confidence), contender_name("gemel", confidence, warm_start)]
        paper = next((name for name in papers if name in names), None)
        if paper is not None:
            pairs.append((contender_name(strategy, confidence, warm_start), paper))
    return pairs


def parse_confidences(text: str) -> list[float | None]:
    """Return the acceptance confidences of a comma-separated list (``accuracy.parse_accept_confidence``).

    Raises:
        ValueError: an entry is neither ``point`` nor a number in [0.5, 1), or an entry repeats.
    """
    try:
        values = [parse_accept_confidence(part) for part in text.split(",")]
    except GemelError as exc:
        raise ValueError(str(exc)) from None
    if len(set(values)) != len(values):
        raise ValueError(f"{text!r}: list distinct confidences")
    return values


# The fields of the search's round events a benchmark run keeps.
ROUND_EVENTS = {
    "round.started": ("type", "round", "trial_layers", "trial_models", "left_out", "estimated_seconds",
                      "continued_from_round"),
    "round.finished": ("type", "round", "accepted", "steps", "stopped", "hopeless", "accuracy", "required",
                       "bytes_saved", "elapsed"),
    "round.cut": ("type", "round", "steps", "max_steps", "accuracy", "required", "stopped"),
}


def run_strategy(
    workload: Workload, strategy: str, budget_minutes: float, round_steps: int,
    accept_confidence: float | None = DEFAULT_ACCEPT_CONFIDENCE, warm_start: WarmStart | None = None,
) -> dict[str, Any]:
    """Return one strategy's benchmark row (its search runs in a scratch directory); ``round_log`` holds each
    round's trial (layers, models, models left out) and outcome (accepted, steps, accuracies against the
    required ones, or where the budget cut it), so a run can be read after the fact."""
    job = Path(tempfile.mkdtemp(prefix=f"gemel-bench-{strategy.replace('+', 'plus')}-"))
    round_log: list[dict[str, Any]] = []

    def log(event: dict[str, Any]) -> None:
        if event["type"] in ROUND_EVENTS:
            round_log.append({key: event[key] for key in ROUND_EVENTS[event["type"]] if key in event})

    try:
        config = SearchConfig(
            strategy=strategy, budget_minutes=budget_minutes, round_budget=RetrainBudget(max_steps=round_steps),
            accept_confidence=accept_confidence, warm_start=warm_start,
        )
        result = run_search(workload, job, config, progress=log).to_json()
        gaps = val_test_gaps(workload, job)
    finally:
        shutil.rmtree(job, ignore_errors=True)
    test_met = [q["meets_target_on_test"] for q in result["queries"]]
    return {
        "strategy": strategy,
        "contender": contender_name(strategy, accept_confidence, warm_start),
        "accept_confidence": accept_confidence,
        "warm_start": warm_start,
        "status": result["status"],
        "rounds": result["rounds"],
        "unmerged_param_bytes": result["unmerged_param_bytes"],
        "saved_param_bytes": result["unmerged_param_bytes"] - result["merged_param_bytes"],
        "savings_fraction": result["savings_fraction"],
        "all_targets_met": all(q["meets_target"] for q in result["queries"]),
        "test_targets_met": sum(test_met),
        "test_targets_total": len(test_met),
        "val_test_gaps": gaps,
        "queries": result["queries"],
        "timeline": result["timeline"],
        "round_log": round_log,
        "seconds_to_final_savings": time_to_reach(
            result["timeline"], result["unmerged_param_bytes"] - result["merged_param_bytes"]
        ),
    }


def val_test_gaps(workload: Workload, job: Path) -> list[float]:
    """Return, for every accepted configuration the search in ``job`` saved (not the unmerged start) and every
    query, the accuracy kept on validation frames minus that kept on test frames (each relative to the
    unmerged model on the same frames)."""
    unmerged = {e.name: (e.unmerged_accuracy, e.unmerged_test) for e in workload.queries}
    gaps = []
    for record in saved_configs(job)[1:]:
        for name, figures in bundle_evaluation(dict(inspect_bundle(record["path"]).metadata)).items():
            val_base, test_base = unmerged.get(name, (None, None))
            if not val_base or test_base is None or not test_base.accuracy:
                continue
            gaps.append(figures["val"]["accuracy"] / val_base - figures["test"]["accuracy"] / test_base.accuracy)
    return gaps


def summarise(runs: list[dict[str, Any]], budget_seconds: float) -> dict[str, Any]:
    """Return one strategy's medians over its repeated runs (savings at 25/50/100% of the budget, mean
    savings, seconds to final savings, rounds), whether every run kept every target on validation frames,
    the share of queries meeting their target on held-out test frames over all runs, and the mean val–test
    gap of the accepted configurations."""
    finals = [r["seconds_to_final_savings"] for r in runs if r["seconds_to_final_savings"] is not None]
    gaps = [gap for r in runs for gap in r["val_test_gaps"]]
    total = sum(r["test_targets_total"] for r in runs)
    return {
        "strategy": runs[0]["strategy"],
        "contender": runs[0].get("contender", runs[0]["strategy"]),
        "accept_confidence": runs[0].get("accept_confidence"),
        "warm_start": runs[0].get("warm_start"),
        "runs": len(runs),
        "rounds": statistics.median(r["rounds"] for r in runs),
        "saved_at": {
            str(c): statistics.median(savings_at(r["timeline"], c * budget_seconds) for r in runs) for c in CHECKPOINTS
        },
        "mean_saved_param_bytes": statistics.median(mean_savings(r["timeline"], budget_seconds) for r in runs),
        "savings_fraction": statistics.median(r["savings_fraction"] for r in runs),
        "all_targets_met": all(r["all_targets_met"] for r in runs),
        "test_targets_met_share": sum(r["test_targets_met"] for r in runs) / total if total else None,
        "mean_val_test_gap": statistics.fmean(gaps) if gaps else None,
        "seconds_to_final_savings": statistics.median(finals) if finals else None,
    }


def _paired_ratios(
    by_contender: dict[str, list[dict[str, Any]]], budget_seconds: float, ours_name: str, paper_name: str
) -> dict[str, float]:
    """Return contender ``ours_name``'s median paired ratios over contender ``paper_name`` (mean savings; how much
    sooner the latter's final savings were reached)."""
    pairs = list(zip(by_contender[ours_name], by_contender[paper_name], strict=True))
    mean_ratios = [
        mean_savings(ours["timeline"], budget_seconds) / mean_savings(paper["timeline"], budget_seconds)
        for ours, paper in pairs
        if mean_savings(paper["timeline"], budget_seconds) > 0
    ]
    sooner = []
    for ours, paper in pairs:
        reach = time_to_reach(ours["timeline"], paper["saved_param_bytes"])
        if reach and paper["seconds_to_final_savings"]:
            sooner.append(paper["seconds_to_final_savings"] / reach)
    ratios = {}
    if mean_ratios:
        ratios["mean_savings_gemel_plus_over_gemel"] = statistics.median(mean_ratios)
    if sooner:
        ratios["gemel_final_savings_reached_sooner"] = statistics.median(sooner)
    return ratios


CHECKPOINTS = (0.25, 0.5, 1.0)


def savings_plot(by_contender: dict[str, list[dict[str, Any]]], budget_seconds: float, title: str) -> str:
    """Return an SVG of every run's savings over time (MiB saved against seconds into the search), one colour per
    contender, repeats dashed after the first."""
    series = [
        Series(f"{name} run {repeat + 1}", [(0.0, 0.0), *((at, saved / MIB) for at, saved in run["timeline"]),
                                            (budget_seconds, run["saved_param_bytes"] / MIB)],
               colour_key=name, steps=True, dashed=repeat > 0)
        for name, runs in by_contender.items() for repeat, run in enumerate(runs)
    ]
    top = max((saved for line in series for _, saved in line.points), default=0.0)
    top = max(1.0, top * 1.1)
    ticks = [top * i / 4 for i in range(5)]
    return line_chart(
        series, title=title, x_label="seconds into the search", y_label="MiB saved, every target met (val)",
        x_range=(0.0, budget_seconds), y_range=(0.0, top),
        x_ticks=[(budget_seconds * i / 4, f"{budget_seconds * i / 4:.0f}") for i in range(5)],
        y_ticks=[(tick, f"{tick:.0f}") for tick in ticks],
    )


def runs_file(out: Path) -> Path:
    """Return where the benchmark writing ``out`` records each finished run as it ends (one JSON line each)."""
    return out.with_name(out.name + ".runs.jsonl")


def _run_key(workload: Workload, budget_minutes: float, round_steps: int) -> dict[str, Any]:
    return {"workload": str(workload.root.resolve()), "budget_minutes": budget_minutes, "round_steps": round_steps}


def _record_run(out: Path, workload: Workload, budget_minutes: float, round_steps: int, contender: str,
                repeat: int, row: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with runs_file(out).open("a") as handle:
        handle.write(json.dumps({**_run_key(workload, budget_minutes, round_steps), "contender": contender,
                                 "repeat": repeat, "row": row}) + "\n")


def finished_runs(out: Path, workload: Workload, budget_minutes: float, round_steps: int,
                  ) -> dict[tuple[str, int], dict[str, Any]]:
    """Return the runs an earlier, interrupted benchmark into ``out`` finished with the same workload, budget and
    round steps, by (contender, repeat): a rerun keeps them and runs only the rest. Lines that do not parse (a
    run cut while it was written) are ignored."""
    key = _run_key(workload, budget_minutes, round_steps)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        lines = runs_file(out).read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            item = json.loads(line)
            if all(item.get(name) == value for name, value in key.items()):
                done[(str(item["contender"]), int(item["repeat"]))] = dict(item["row"])
        except (ValueError, KeyError, TypeError):
            continue
    return done


def main(argv: Sequence[str]) -> int:
    """Run the benchmark from the command line; print a table, write JSON; return 0. Each finished run is recorded
    beside the JSON (``runs_file``) as it ends, so an interrupted benchmark run again keeps the runs it finished."""
    parser = argparse.ArgumentParser(prog="python -m gemel_engine bench merge", description=__doc__)
    parser.add_argument("--workload", type=Path, help="workload.json (default: build the 'mix' demo once)")
    parser.add_argument("--strategies", default="stem,gemel,gemel+", help="comma-separated strategies")
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="wall-clock budget per strategy")
    parser.add_argument("--round-steps", type=int, default=120, help="most retraining steps per round")
    parser.add_argument("--accept-confidence", default="point", metavar="LIST",
                        help="comma-separated acceptance rules, each strategy runs under every one: a one-sided "
                             "confidence in [0.5, 1) or 'point' (the point figure decides)")
    parser.add_argument("--warm-start", default="own", metavar="LIST",
                        help="comma-separated warm starts, each strategy runs with every one: 'own' (the "
                             "strategy's), 'first' or 'mean'")
    parser.add_argument("--repeats", type=int, default=3, help="runs per strategy, interleaved (medians reported)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/merge.json"),
                        help="JSON output file; finished runs are kept beside it, and a rerun keeps them")
    args = parser.parse_args(argv)
    strategies = registered_names(parser, args.strategies, list_strategies(), "strategies")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        confidences = parse_confidences(args.accept_confidence)
    except ValueError as exc:
        parser.error(f"--accept-confidence: {exc}")
    try:
        warm_starts = parse_warm_starts(args.warm_start)
    except ValueError as exc:
        parser.error(f"--warm-start: {exc}")
    if args.workload is None:
        default = Path("bench-results/workloads/mix")
        built = (default / "workload.json").exists()
        workload = Workload.load(default / "workload.json") if built else build_demo("mix", default)
    else:
        workload = Workload.load(args.workload)
    budget_seconds = args.budget_minutes * 60
    contenders = contenders_of(strategies, warm_starts, confidences)
    by_contender: dict[str, list[dict[str, Any]]] = {contender_name(s, c, w): [] for s, w, c in contenders}
    done = finished_runs(args.out, workload, args.budget_minutes, args.round_steps)
    for repeat in range(args.repeats):
        for strategy, warm_start, confidence in contenders:
            name = contender_name(strategy, confidence, warm_start)
            row = done.get((name, repeat))
            if row is None:
                row = run_strategy(workload, strategy, args.budget_minutes, args.round_steps, confidence, warm_start)
                _record_run(args.out, workload, args.budget_minutes, args.round_steps, name, repeat, row)
            else:
                print(f"kept {name} run {repeat + 1} from {runs_file(args.out)}")
            by_contender[name].append(row)
    summaries = [summarise(runs, budget_seconds) for runs in by_contender.values()]
    print(
        f"workload {workload.name}: {len(workload.queries)} queries; budget {args.budget_minutes:g} min per run; "
        f"medians of {args.repeats} interleaved runs"
    )
    print(format_table(
        ["strategy@acceptance", "rounds", *(f"saved MiB @{int(c * 100)}%" for c in CHECKPOINTS), "mean MiB", "saved %",
         "val targets met", "test targets met", "val-test gap", "s to final"],
        [
            [
                r["contender"], f"{r['rounds']:g}", *(mib(r["saved_at"][str(c)]) for c in CHECKPOINTS),
                mib(r["mean_saved_param_bytes"]), percent(r["savings_fraction"]),
                "all" if r["all_targets_met"] else "NOT ALL",
                "-" if r["test_targets_met_share"] is None else percent(r["test_targets_met_share"]),
                "-" if r["mean_val_test_gap"] is None else f"{r['mean_val_test_gap']:+.3f}",
                "-" if r["seconds_to_final_savings"] is None else f"{r['seconds_to_final_savings']:.0f}",
            ]
            for r in summaries
        ],
    ))
    ratios = {}
    pairs = ratio_pairs(contenders)
    for ours, paper in pairs:
        for name, value in _paired_ratios(by_contender, budget_seconds, ours, paper).items():
            ratios[name if len(pairs) == 1 else f"{name}[{ours}]"] = value
            print(f"{name.replace('_', ' ')}, {ours} over {paper} (median of paired runs): {value:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "merge", "workload": workload.name, "budget_minutes": args.budget_minutes,
        "repeats": args.repeats, "accept_confidences": confidences, "warm_starts": warm_starts,
        "summary": summaries, "ratios": ratios,
        "runs": by_contender,
    }, indent=2) + "\n")
    plot = args.out.with_suffix(".svg")
    plot.write_text(savings_plot(
        by_contender, budget_seconds,
        f"{workload.name}: savings over time, {args.budget_minutes:g} min budget, {args.repeats} repeat(s)"))
    print(f"wrote {args.out} and {plot}")
    return 0
