"""Edge runtime under memory budgets: drops, effective accuracy and swapping per scheduler, measured and predicted.

For each budget (from the largest single model plus the activation reserve up to every unmerged model
resident) and each scheduler, the workload's validation frames are replayed as camera streams on a
virtual clock through the real executor (real forward passes, compute time measured per layer, CPU
transfers charged by the bandwidth model: ``simulated``), and through the what-if simulator for
comparison. ``time-sharing`` and ``space-sharing`` run the workload's unmerged models, ``merged`` the
bundle. Also measured: inference with everything resident, merged bundle vs unmerged models (interleaved
repeats, median ratio). Writes JSON and an SVG plot (drawn here: matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gemel_engine.bench import registered_names
from gemel_engine.bundle import ModelRecipe, load_bundle
from gemel_engine.errors import RuntimeBudgetError, UsageError
from gemel_engine.queries import predict
from gemel_engine.report import MIB, format_table, mib, percent
from gemel_engine.runtime.budget import MemoryBudget
from gemel_engine.runtime.clock import VirtualClock
from gemel_engine.runtime.executor import TIMINGS, Executor, resolve_device
from gemel_engine.runtime.profile import profile_recipe
from gemel_engine.runtime.scheduler import get_scheduler, list_schedulers, stack_images
from gemel_engine.runtime.simulator import predict_stream, simulate
from gemel_engine.runtime.stream import serve_offline, workload_stream
from gemel_engine.runtime.swap import BandwidthModel, find_units
from gemel_engine.workload import Workload


def resolve_bundle(path: Path) -> Path:
    """Return the bundle directory ``path`` names: itself, or a merge job's final bundle (its result.json).

    Raises:
        UsageError: neither a bundle nor a merge job directory.
    """
    if (path / "manifest.json").is_file():
        return path
    result = path / "result.json"
    if result.is_file():
        try:
            return Path(json.loads(result.read_text())["bundle"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{result}: not a merge result") from None
    raise UsageError(f"{path}: neither a bundle nor a merge job directory")


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
    width, height, pad = 560, 340, 50
    budgets = sorted({r["budget_bytes"] for r in rows})
    lo, hi = budgets[0], budgets[-1] if budgets[-1] > budgets[0] else budgets[0] + 1
    colours = dict(zip(schedulers, ("#d62728", "#1f77b4", "#2ca02c", "#9467bd"), strict=False))

    def x(value: float) -> float:
        return pad + (value - lo) / (hi - lo) * (width - 2 * pad)

    def y(value: float) -> float:
        return height - pad - value * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">memory budget (MiB)</text>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
        "mean effective accuracy</text>",
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{pad - 6}" y="{y(tick) + 4}" text-anchor="end">{tick:.2f}</text>')
    for budget in budgets:
        parts.append(f'<text x="{x(budget)}" y="{height - pad + 14}" text-anchor="middle">{mib(budget)}</text>')
    for index, scheduler in enumerate(schedulers):
        points = [
            (x(r["budget_bytes"]), y(r["mean_effective_accuracy"]))
            for r in rows
            if r["scheduler"] == scheduler and r.get("mean_effective_accuracy") is not None
        ]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline fill="none" stroke="{colours[scheduler]}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{width - pad - 110}" y="{pad + 14 * index}" fill="{colours[scheduler]}">{scheduler}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str]) -> int:
    """Run the benchmark from the command line; print a table, write JSON and an SVG plot; return 0."""
    parser = argparse.ArgumentParser(prog="python -m gemel_engine bench runtime", description=__doc__)
    parser.add_argument("--workload", type=Path, required=True, help="workload.json with trained unmerged models")
    parser.add_argument("--bundle", type=Path, required=True, help="merged bundle, or a merge job directory")
    parser.add_argument("--budgets", help="comma-separated budgets in MiB (default: --steps evenly spaced)")
    parser.add_argument("--steps", type=int, default=4, help="budgets from the smallest to everything resident")
    parser.add_argument("--schedulers", default="time-sharing,space-sharing,merged", help="comma-separated")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second of every camera")
    parser.add_argument("--slo-ms", type=float, default=300.0, help="latency bound of every query")
    parser.add_argument("--bandwidth-gbps", type=float, default=8.0, help="simulated host-to-device GB/s (CPU)")
    parser.add_argument("--policy", default="lru", help="eviction policy (lru, mru)")
    parser.add_argument("--max-frames", type=int, help="validation frames per camera (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the resident-inference timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 times steadily on a busy box)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--timing", choices=TIMINGS, default="measured",
                        help="compute time charged on the CPU: measured per layer now, or the cached profile's")
    parser.add_argument("--out", type=Path, default=Path("bench-results/runtime.json"), help="JSON output file")
    args = parser.parse_args(argv)
    schedulers = registered_names(parser, args.schedulers, list_schedulers(), "schedulers")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bandwidth = BandwidthModel(args.bandwidth_gbps * 1e9)
    workload = Workload.load(args.workload)
    bundle = load_bundle(resolve_bundle(args.bundle))
    queries, frames = workload_stream(workload, fps=args.fps, slo_ms=args.slo_ms, max_frames=args.max_frames)
    unmerged = {entry.name: workload.load_model(entry) for entry in workload.queries}
    merged = bundle.models.as_dict()
    missing = sorted(set(unmerged) - set(merged))
    if missing:
        raise UsageError(f"the bundle has no model for queries {missing}")
    recipes = {e.name: ModelRecipe(e.query.arch, e.recipe_args()) for e in workload.queries}
    size = (int(frames[0].image.shape[1]), int(frames[0].image.shape[0]))
    profiles = {
        name: profile_recipe(recipe, input_size=size, device=device, bandwidth=bandwidth)
        for name, recipe in recipes.items()
    }
    reserve = max(p.activation_bytes for p in profiles.values())
    units, order = find_units(unmerged)
    largest = max(sum(units[k].nbytes for k in keys) for keys in order.values())
    everything = sum(unit.nbytes for unit in units.values())
    if args.budgets:
        budgets = [int(float(v) * MIB) for v in args.budgets.split(",")]
    else:
        steps = max(2, args.steps)
        budgets = [largest + reserve + round((everything - largest) * i / (steps - 1)) for i in range(steps)]
    predictions = {
        "unmerged": predict_stream(unmerged, queries, frames), "merged": predict_stream(merged, queries, frames)
    }
    rows = []
    for budget_bytes in budgets:
        budget = MemoryBudget(budget_bytes, reserve)
        for name in schedulers:
            scheduler = get_scheduler(name)
            layout = "merged" if scheduler.merged else "unmerged"
            row: dict[str, Any] = {"budget_bytes": budget_bytes, "scheduler": name, "models": layout}
            try:
                executor = Executor(
                    merged if scheduler.merged else unmerged, budget=budget, device=device, clock=VirtualClock(),
                    policy=args.policy, keep_shared=scheduler.keep_shared, bandwidth=bandwidth, profiles=profiles,
                    timing=args.timing,
                )
                executor.warm_up(frames[0].image, {q.model: q.task for q in queries})
                report = serve_offline(executor, queries, frames, scheduler)
                executor.close()
                predicted = simulate(
                    recipes=recipes, plan=bundle.plan if scheduler.merged else None, profiles=profiles,
                    predictions=predictions[layout], queries=queries, frames=frames, budget=budget, scheduler=name,
                    policy=args.policy, bandwidth=bandwidth,
                )
            except RuntimeBudgetError as exc:
                row.update(fits=False, reason=str(exc))
                rows.append(row)
                continue
            row.update(fits=True, **report, predicted_drop_rate=predicted["drop_rate"],
                       predicted_mean_effective_accuracy=predicted["mean_effective_accuracy"])
            rows.append(row)
    ratio = resident_inference_ratio(unmerged, merged, queries, frames, args.repeats)
    tight = budgets[0]
    by_key = {(r["budget_bytes"], r["scheduler"]): r for r in rows if r.get("fits")}
    gains = {}
    for budget_bytes in budgets:
        ours, base = by_key.get((budget_bytes, "merged")), by_key.get((budget_bytes, "time-sharing"))
        if ours and base and base["mean_effective_accuracy"]:
            gains[str(budget_bytes)] = ours["mean_effective_accuracy"] / base["mean_effective_accuracy"] - 1
    print(
        f"workload {workload.name}: {len(queries)} queries, {len(frames)} frames at {args.fps:g} fps, SLO "
        f"{args.slo_ms:g} ms, link {args.bandwidth_gbps:g} GB/s (simulated), reserve {mib(reserve)} MiB, "
        f"{device.type}, compute {args.timing}"
    )
    names = [q.name for q in queries]
    print(format_table(
        ["budget MiB", "scheduler", "drops", "predicted", "mean acc", *names, "swapped MiB/s"],
        [
            [mib(r["budget_bytes"]), r["scheduler"], percent(r["drop_rate"]), percent(r["predicted_drop_rate"]),
             f"{r['mean_effective_accuracy']:.3f}",
             *(f"{r['queries'][n]['effective_accuracy']:.3f}" for n in names), mib(r["swapped_bytes_per_second"])]
            if r.get("fits") else [mib(r["budget_bytes"]), r["scheduler"], "does not fit", *[""] * (3 + len(names))]
            for r in rows
        ],
    ))
    for budget_bytes, gain in gains.items():
        print(f"merged vs time-sharing mean effective accuracy at {mib(int(budget_bytes))} MiB: {gain:+.1%}")
    print(f"resident inference, unmerged / merged time (median of {args.repeats}): "
          f"{ratio['ratio_unmerged_over_merged']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "runtime", "workload": workload.name, "bundle": str(resolve_bundle(args.bundle)),
        "fps": args.fps, "slo_ms": args.slo_ms, "bandwidth": bandwidth.to_json(), "simulated_transfers": True,
        "policy": args.policy, "device": device.type, "timing": args.timing, "reserve_bytes": reserve,
        "budgets": budgets,
        "tightest_budget_bytes": tight, "merged_over_time_sharing_accuracy_gain": gains,
        "resident_inference": ratio, "rows": rows,
    }, indent=2) + "\n")
    plot = args.out.with_suffix(".svg")
    plot.write_text(_svg([r for r in rows if r.get("fits")], schedulers))
    print(f"wrote {args.out} and {plot}")
    return 0
