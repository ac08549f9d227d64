"""Edge runtime under memory budgets: drops, effective accuracy and swapping per scheduler, measured and predicted.

For each link speed, fps and budget (the paper's: the smallest in which every model fits alone, 50% and 75% of
the way to everything resident, everything resident) and each scheduler, the workload's held-out test frames
are replayed as camera streams (for at least a minute) on a virtual clock through the real executor (real
forward passes, compute time measured per layer, CPU transfers charged by the bandwidth model: ``simulated``),
and through the what-if simulator for comparison. Every scheduler pays for its warm-up loads on the same
clock. ``time-sharing`` (earliest deadline first) and ``time-sharing-load-aware`` run the unmerged models,
``merged-edf`` and ``merged`` (load-aware) the bundle, so merging's gain is read with the policy held fixed.
Also measured: inference with everything resident, merged bundle vs unmerged models (interleaved repeats,
median ratio). Writes JSON and one SVG plot per link speed (drawn here: matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemel_engine.bench import registered_names
from gemel_engine.bench.svg import Series, line_chart
from gemel_engine.bundle import ModelRecipe, load_bundle
from gemel_engine.errors import RuntimeBudgetError, UsageError
from gemel_engine.fileio import write_json_atomically
from gemel_engine.queries import predict
from gemel_engine.report import MIB, format_table, mib, percent
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.disk import calibrate_disk_tier
from gemel_engine.runtime.executor import TIMINGS, Executor
from gemel_engine.runtime.profile import profile_recipe
from gemel_engine.runtime.scheduler import get_scheduler, list_schedulers, stack_images
from gemel_engine.runtime.simulator import predict_stream, simulate
from gemel_engine.runtime.stream import serve_offline, workload_stream
from gemel_engine.runtime.swap import BandwidthModel, find_units, unit_tensors
from gemel_engine.search import resolve_bundle
from gemel_engine.train import resolve_device, torch_threads
from gemel_engine.workload import Workload


def resident_inference_ratio(
    unmerged: dict[str, Any], merged: dict[str, Any], queries: Sequence[Any], frames: Sequence[Any], repeats: int
) -> dict[str, Any]:
    """Return the seconds to run every query's frames with everything resident, unmerged vs merged (interleaved),
    and the median ratio unmerged / merged (above 1: merged is faster)."""
    by_camera = {q.camera: stack_images([f for f in frames if f.camera == q.camera]) for q in queries}
    timings: dict[str, list[float]] = {"unmerged": [], "merged": []}
    for _ in range(repeats):
        for label, models in (("unmerged", unmerged), ("merged", merged)):
            start = time.perf_counter()
            for query in queries:
                predict(models[query.model], by_camera[query.camera], query.task, batch_size=4)
            timings[label].append(time.perf_counter() - start)
    ratios = [u / m for u, m in zip(timings["unmerged"], timings["merged"], strict=True)]
    return {"seconds": timings, "ratio_unmerged_over_merged": statistics.median(ratios)}


def _svg(rows: list[dict[str, Any]], schedulers: Sequence[str]) -> str:
    budgets = sorted({r["budget_bytes"] for r in rows})
    lo, hi = budgets[0], budgets[-1] if budgets[-1] > budgets[0] else budgets[0] + 1
    series = [
        Series(scheduler, [(r["budget_bytes"], r["mean_effective_accuracy"]) for r in rows
                           if r["scheduler"] == scheduler and r.get("mean_effective_accuracy") is not None])
        for scheduler in schedulers
    ]
    return line_chart(
        series, x_label="memory budget (MiB)", y_label="mean effective accuracy", x_range=(lo, hi),
        y_range=(0.0, 1.0), x_ticks=[(budget, mib(budget)) for budget in budgets],
        y_ticks=[(tick, f"{tick:.2f}") for tick in (0.0, 0.25, 0.5, 0.75, 1.0)],
    )


# The paper's budgets: the smallest in which every model fits alone, 50% and 75% of the way to everything
# resident, and everything resident.
PAPER_BUDGET_FRACTIONS = (0.0, 0.5, 0.75, 1.0)
# What each scheduler runs and how it picks: the comparison holds one of them fixed.
POLICIES = {
    "time-sharing": "earliest-deadline", "merged-edf": "earliest-deadline",
    "time-sharing-load-aware": "load-aware", "merged": "load-aware", "space-sharing": "earliest-deadline",
}
# Pairs (merged, unmerged) under the same pick policy: what merging alone gives.
SAME_POLICY_PAIRS = (("merged-edf", "time-sharing"), ("merged", "time-sharing-load-aware"))


def _numbers(text: str, what: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated numbers, got {text!r}")
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        parser.error(f"{what} must be comma-separated numbers >= 0, got {text!r}")
    return values


def _gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per (link, fps, budget), merging's gain in mean effective accuracy with the policy held fixed and
    the load-aware policy's gain with the models held fixed."""
    by_key = {(r["link"], r["fps"], r["budget_bytes"], r["scheduler"]): r for r in rows if r.get("fits")}
    out = []
    def accuracy(key: tuple[float, float, int], name: str) -> float | None:
        row = by_key.get((*key, name))
        return row["mean_effective_accuracy"] if row else None

    for link, fps, budget in dict.fromkeys((r["link"], r["fps"], r["budget_bytes"]) for r in rows):
        entry: dict[str, Any] = {"link": link, "fps": fps, "budget_bytes": budget}
        for ours, base in SAME_POLICY_PAIRS:
            mine, theirs = accuracy((link, fps, budget), ours), accuracy((link, fps, budget), base)
            if mine is not None and theirs:
                entry[f"merging_gain_{POLICIES[ours].replace('-', '_')}"] = mine / theirs - 1
        for unmerged, models in ((("time-sharing-load-aware", "time-sharing"), "unmerged"),
                                 (("merged", "merged-edf"), "merged")):  # (load-aware, earliest deadline)
            mine, theirs = accuracy((link, fps, budget), unmerged[0]), accuracy((link, fps, budget), unmerged[1])
            if mine is not None and theirs:
                entry[f"policy_gain_{models}"] = mine / theirs - 1
        out.append(entry)
    return out


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["tier"], row["link"], row["fps"], row["budget_bytes"], row["scheduler"])


def _load_done(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the rows of an earlier run of the same settings at ``out`` (to resume), or none."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict) or earlier.get("settings") != settings:
        return []
    return [row for row in earlier.get("rows", []) if isinstance(row, dict) and "link" in row]


def _print_row(row: dict[str, Any], names: Sequence[str]) -> None:
    where = f"{row['link']} {row['fps']:g} fps {mib(row['budget_bytes'])} MiB {row['scheduler']}"
    if not row.get("fits"):
        print(f"  {where}: does not fit", flush=True)
        return
    per_query = " ".join(f"{n} {row['queries'][n]['effective_accuracy']:.3f}" for n in names)
    print(f"  {where}: drops {percent(row['drop_rate'])} (predicted {percent(row['predicted_drop_rate'])}), "
          f"mean acc {row['mean_effective_accuracy']:.3f} (predicted "
          f"{row['predicted_mean_effective_accuracy']:.3f}); {per_query}", flush=True)


def validation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return how far the simulator's predictions are from the measured rows: the largest absolute gap in drop
    rate (points) and in mean effective accuracy, over rows whose times were measured (disk or CUDA tier)."""
    measured = [r for r in rows if r.get("fits") and r["tier"] != "simulated"]
    if not measured:
        return {"rows": 0}
    drops = [abs(r["drop_rate"] - r["predicted_drop_rate"]) for r in measured]
    accuracy = [abs(r["mean_effective_accuracy"] - r["predicted_mean_effective_accuracy"]) for r in measured
                if r["mean_effective_accuracy"] is not None and r["predicted_mean_effective_accuracy"] is not None]
    return {"rows": len(measured), "max_drop_rate_gap_points": 100 * max(drops),
            "max_accuracy_gap": max(accuracy, default=0.0)}


def main(argv: Sequence[str]) -> int:
    """Run the benchmark from the command line; print a table, write JSON and an SVG plot; return 0."""
    parser = argparse.ArgumentParser(prog="python -m gemel_engine bench runtime", description=__doc__)
    parser.add_argument("--workload", type=Path, required=True, help="workload.json with trained unmerged models")
    parser.add_argument("--bundle", type=Path, required=True, help="merged bundle, or a merge job directory")
    parser.add_argument("--budgets", help="comma-separated budgets in MiB (default: the paper's budgets)")
    parser.add_argument("--budget-fractions", default=",".join(f"{f:g}" for f in PAPER_BUDGET_FRACTIONS),
                        help="budgets as fractions of the way from the smallest fit to everything resident")
    parser.add_argument("--schedulers", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--fps", default="15", help="frames per second of every camera (comma-separated sweep)")
    parser.add_argument("--slo-ms", type=float, default=300.0, help="latency bound of every query")
    parser.add_argument("--tier", choices=("simulated", "disk"), default="simulated",
                        help="on the CPU: transfers charged by the bandwidth model (simulated), or real reads from "
                             "disk with the page cache dropped, measured (disk); a GPU is always its own tier")
    parser.add_argument("--bandwidth-gbps", default="8",
                        help="simulated host-to-device GB/s (comma-separated sweep, e.g. 12,2,0.5); the disk tier "
                             "measures its own")
    parser.add_argument("--min-stream-seconds", type=float, default=60.0,
                        help="replay each camera's test frames until its stream lasts this long")
    parser.add_argument("--policy", default="lru", help="eviction policy (lru, mru)")
    parser.add_argument("--max-frames", type=int, help="test frames per camera (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the resident-inference timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 times steadily on a busy box)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--timing", choices=TIMINGS, default="measured",
                        help="compute time charged on the simulated tier: measured per layer now, or the cached "
                             "profile's")
    parser.add_argument("--out", type=Path, default=Path("bench-results/runtime.json"),
                        help="JSON output file, rewritten after every row; a rerun with the same settings resumes")
    parser.add_argument("--fresh", action="store_true", help="ignore the rows of an earlier run at --out")
    args = parser.parse_args(argv)
    schedulers = registered_names(parser, args.schedulers, list_schedulers(), "schedulers")
    rates = _numbers(args.fps, "--fps", parser)
    fractions = _numbers(args.budget_fractions, "--budget-fractions", parser)
    with torch_threads(args.threads):
        return _run(args, parser, schedulers, rates, fractions)


def _run(
    args: argparse.Namespace, parser: argparse.ArgumentParser, schedulers: list[str], rates: list[float],
    fractions: list[float],
) -> int:
    device = resolve_device(args.device)
    tier = "cuda" if device.type == "cuda" else args.tier
    links: list[float | str] = ["disk"] if tier == "disk" else list(_numbers(args.bandwidth_gbps, "--bandwidth-gbps",
                                                                             parser))
    workload = Workload.load(args.workload)
    bundle = load_bundle(resolve_bundle(args.bundle))
    unmerged = {entry.name: workload.load_model(entry) for entry in workload.queries}
    merged = bundle.models.as_dict()
    missing = sorted(set(unmerged) - set(merged))
    if missing:
        raise UsageError(f"the bundle has no model for queries {missing}")
    recipes = {e.name: ModelRecipe(e.query.arch, e.recipe_args()) for e in workload.queries}
    units, order = find_units(unmerged)
    largest = max(sum(units[k].nbytes for k in keys) for keys in order.values())
    everything = sum(unit.nbytes for unit in units.values())
    settings = {
        "workload": str(args.workload.resolve()), "bundle": str(resolve_bundle(args.bundle)),
        "tier": tier, "links": links, "fps": rates, "slo_ms": args.slo_ms, "fractions": fractions,
        "budgets": args.budgets, "schedulers": schedulers, "policy": args.policy, "max_frames": args.max_frames,
        "min_stream_seconds": args.min_stream_seconds, "timing": args.timing, "threads": args.threads,
    }
    rows = [] if args.fresh else _load_done(args.out, settings)
    done = {_row_key(row) for row in rows}
    if rows:
        print(f"resuming: {len(rows)} rows of an earlier run with the same settings are kept from {args.out}")
    calibration: dict[str, Any] | None = None
    disk_model: BandwidthModel | None = None
    if tier == "disk":
        tensors = {key: unit_tensors(unmerged[unit.members[0][0]].get_submodule(unit.members[0][1]))
                   for key, unit in units.items()}
        disk_model, summary = calibrate_disk_tier(units, tensors)
        calibration = {**disk_model.to_json(), **summary}
        print(f"disk tier calibrated on {summary['reads']} reads with the page cache dropped: "
              f"{disk_model.bytes_per_second / 1e9:.2f} GB/s + {disk_model.latency_seconds * 1e6:.0f} us per read "
              f"(median error of the fit {summary['fit_median_relative_error']:.0%})")
    names = [q.name for q in workload.queries]
    reserve = 0
    budgets: list[int] = []

    def write(complete: bool) -> None:
        write_json_atomically(args.out, {
            "benchmark": "runtime", "workload": workload.name, "bundle": settings["bundle"], "settings": settings,
            "complete": complete, "fps": rates, "link_gbps": links, "slo_ms": args.slo_ms, "tier": tier,
            "simulated_transfers": tier == "simulated", "disk_calibration": calibration,
            "min_stream_seconds": args.min_stream_seconds, "warm_up": "charged to every scheduler's clock",
            "policy": args.policy, "device": device.type, "timing": args.timing, "reserve_bytes": reserve,
            "budget_fractions": fractions, "budgets": budgets, "gains": _gains(rows),
            "simulator_vs_measured": validation(rows), "rows": rows,
        })

    for fps in rates:
        queries, frames = workload_stream(workload, fps=fps, slo_ms=args.slo_ms, max_frames=args.max_frames,
                                          min_seconds=args.min_stream_seconds)
        predictions: dict[str, Any] = {}
        size = (int(frames[0].image.shape[1]), int(frames[0].image.shape[0]))
        for link in links:
            bandwidth = disk_model if link == "disk" and disk_model is not None else BandwidthModel(float(link) * 1e9)
            profiles = {
                name: profile_recipe(recipe, input_size=size, device=device, bandwidth=bandwidth)
                for name, recipe in recipes.items()
            }
            reserve = max(p.activation_bytes for p in profiles.values())
            if args.budgets:
                budgets = [int(float(v) * MIB) for v in args.budgets.split(",")]
            else:
                budgets = [largest + reserve + round((everything - largest) * f) for f in fractions]
            for budget_bytes in budgets:
                budget = MemoryBudget(budget_bytes, reserve)
                for name in schedulers:
                    scheduler = get_scheduler(name)
                    layout = "merged" if scheduler.merged else "unmerged"
                    row: dict[str, Any] = {
                        "budget_bytes": budget_bytes, "link": link if link == "disk" else f"{link:g} GB/s",
                        "link_gbps": bandwidth.bytes_per_second / 1e9, "fps": fps, "scheduler": name,
                        "policy": POLICIES.get(name, name), "models": layout, "tier": tier,
                    }
                    if _row_key(row) in done:
                        continue
                    if layout not in predictions:
                        predictions[layout] = predict_stream(merged if scheduler.merged else unmerged, queries,
                                                             frames)
                    try:
                        predicted = simulate(
                            recipes=recipes, plan=bundle.plan if scheduler.merged else None, profiles=profiles,
                            predictions=predictions[layout], queries=queries, frames=frames, budget=budget,
                            scheduler=name, policy=args.policy, bandwidth=bandwidth, overlap=tier != "disk",
                        )
                        source = merged if scheduler.merged else unmerged
                        # The disk tier releases the weights it swaps out: it gets a copy (ties kept).
                        models = copy.deepcopy(source) if tier == "disk" else source
                        executor = Executor(
                            models, budget=budget, device=device, clock=VirtualClock(), policy=args.policy,
                            keep_shared=scheduler.keep_shared, bandwidth=bandwidth, profiles=profiles,
                            timing=args.timing, tier="disk" if tier == "disk" else "auto",
                        )
                        try:
                            executor.warm_up(frames[0].image, {q.model: q.task for q in queries})
                            report = serve_offline(executor, queries, frames, scheduler)
                        finally:
                            executor.close()
                    except RuntimeBudgetError as exc:
                        row.update(fits=False, reason=str(exc))
                    else:
                        row.update(fits=True, **report, predicted_drop_rate=predicted["drop_rate"],
                                   predicted_mean_effective_accuracy=predicted["mean_effective_accuracy"])
                    rows.append(row)
                    _print_row(row, names)
                    write(complete=False)
    queries, frames = workload_stream(workload, fps=rates[0], slo_ms=args.slo_ms, max_frames=args.max_frames)
    ratio = resident_inference_ratio(unmerged, merged, queries, frames, args.repeats)
    gains = _gains(rows)
    print(
        f"workload {workload.name}: {len(queries)} queries, test frames replayed for at least "
        f"{args.min_stream_seconds:g} s per camera at {args.fps} fps, SLO {args.slo_ms:g} ms, "
        f"links {', '.join(map(str, links))} ({tier}), reserve {mib(reserve)} MiB, {device.type}, "
        f"compute {'measured wall time' if tier != 'simulated' else args.timing}; "
        "warm-up loads charged to every scheduler's clock"
    )
    print(format_table(
        ["link", "fps", "budget MiB", "scheduler", "policy", "drops", "predicted", "mean acc", "predicted acc",
         *names, "swapped MiB/s"],
        [
            [r["link"], f"{r['fps']:g}", mib(r["budget_bytes"]), r["scheduler"], r["policy"],
             percent(r["drop_rate"]), percent(r["predicted_drop_rate"]), f"{r['mean_effective_accuracy']:.3f}",
             f"{r['predicted_mean_effective_accuracy']:.3f}",
             *(f"{r['queries'][n]['effective_accuracy']:.3f}" for n in names), mib(r["swapped_bytes_per_second"])]
            if r.get("fits") else [r["link"], f"{r['fps']:g}", mib(r["budget_bytes"]), r["scheduler"],
                                   r["policy"], "does not fit", *[""] * (4 + len(names))]
            for r in rows
        ],
    ))
    for gain in gains:
        parts = [f"{key.replace('_', ' ')} {value:+.1%}" for key, value in gain.items() if key.endswith(
            ("deadline", "aware", "unmerged", "_merged"))]
        if parts:
            where = f"{gain['link']}, {gain['fps']:g} fps, {mib(gain['budget_bytes'])} MiB"
            print(f"{where}: " + "; ".join(parts))
    checked = validation(rows)
    if checked["rows"]:
        print(f"simulator vs measured ({checked['rows']} rows): drop rate within "
              f"{checked['max_drop_rate_gap_points']:.1f} points, mean effective accuracy within "
              f"{checked['max_accuracy_gap']:.3f}")
    print(f"resident inference, unmerged / merged time (median of {args.repeats}): "
          f"{ratio['ratio_unmerged_over_merged']:.3f}")
    write(complete=True)
    data = json.loads(args.out.read_text())
    data["resident_inference"] = ratio
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    for link in links:
        label = link if link == "disk" else f"{link:g}gbps"
        plot = args.out.with_name(f"{args.out.stem}-{label}.svg")
        plot.write_text(_svg([r for r in rows if r.get("fits") and r["link"] == (link if link == "disk" else
                                                                              f"{link:g} GB/s")
                              and r["fps"] == rates[0]], schedulers))
        print(f"wrote {plot}")
    print(f"wrote {args.out}")
    return 0
