"""Structural optimum of reference model mixes (the paper's families), in both matching modes.

For each mix: the bytes every shareable layer would save in ``exact`` and ``shape`` mode (analysed on the
meta device: shapes only), the median analysis time, and, unless ``--no-measure``, the savings measured
after really tying the ``exact`` plan in CPU memory (unique storages), which must equal the optimum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemel_engine import zoo
from gemel_engine.layers import analyze_models
from gemel_engine.memory import footprint
from gemel_engine.modelset import ModelSet
from gemel_engine.report import format_table, mib, percent
from gemel_engine.sharing import apply_plan

CLASSIFIER_CLASSES = 2
DETECTOR_CLASSES = 6

REFERENCE_MIXES: dict[str, tuple[str, ...]] = {
    "vgg16+vgg19": ("vgg16", "vgg19"),
    "resnet18/50/101/152": ("resnet18", "resnet50", "resnet101", "resnet152"),
    "3x resnet50": ("resnet50", "resnet50", "resnet50"),
    "fasterrcnn+resnet50": ("fasterrcnn_resnet50_fpn", "resnet50"),
    "ssd300+vgg16": ("ssd300_vgg16", "vgg16"),
    "mobilenet_v3 s/l+ssdlite": ("mobilenet_v3_small", "mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"),
    "paper families": (
        "resnet18", "resnet50", "resnet101", "resnet152", "vgg16", "inception_v3", "mobilenet_v3_large",
        "fasterrcnn_resnet50_fpn", "ssd300_vgg16",
    ),
}


def _build(archs: Sequence[str], device: str) -> dict[str, Any]:
    models = {}
    for index, arch in enumerate(archs):
        classes = DETECTOR_CLASSES if zoo.get_spec(arch).task == "detection" else CLASSIFIER_CLASSES
        models[f"q{index}_{arch}"] = zoo.get_model(arch, num_classes=classes, device=device)
    return models


def measure_mix(name: str, archs: Sequence[str], *, repeats: int = 5, measure: bool = True) -> dict[str, Any]:
    """Return the benchmark row of one mix: sizes and optima in both modes, timings, measured savings."""
    models = _build(archs, "meta")
    row: dict[str, Any] = {"mix": name, "models": list(archs)}
    for mode in ("exact", "shape"):
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            analysis = analyze_models(models, mode=mode)
            timings.append(time.perf_counter() - start)
        row["total_param_bytes"] = analysis.total_param_bytes
        row[f"{mode}_savings_bytes"] = analysis.max_savings_bytes
        row[f"{mode}_savings_fraction"] = analysis.max_savings_fraction
        row[f"{mode}_instances"] = len(analysis.instances)
        row[f"{mode}_analysis_seconds_median"] = statistics.median(timings)
    if measure:
        real = ModelSet(_build(archs, "cpu"))
        plan = analyze_models(real.as_dict(), mode="exact").plan()
        apply_plan(real, plan)
        row["measured_exact_savings_bytes"] = footprint(real).saved_param_bytes
    return row


def main(argv: Sequence[str]) -> int:
    """Run the benchmark from the command line; print a table, write JSON; return 0."""
    parser = argparse.ArgumentParser(prog="python -m gemel_engine bench analyze", description=__doc__)
    parser.add_argument("--mix", action="append", choices=sorted(REFERENCE_MIXES), help="mixes to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/analyze.json"), help="JSON output file")
    parser.add_argument("--repeats", type=int, default=5, help="timed analyses per mode (median reported)")
    parser.add_argument("--no-measure", action="store_true", help="skip tying real models in CPU memory")
    args = parser.parse_args(argv)
    rows = [
        measure_mix(name, REFERENCE_MIXES[name], repeats=args.repeats, measure=not args.no_measure)
        for name in (args.mix or REFERENCE_MIXES)
    ]
    print(format_table(
        ["mix", "models", "params MiB", "exact MiB", "exact %", "shape MiB", "shape %", "measured MiB", "ms (exact)"],
        [
            [
                r["mix"], len(r["models"]), mib(r["total_param_bytes"]),
                mib(r["exact_savings_bytes"]), percent(r["exact_savings_fraction"]),
                mib(r["shape_savings_bytes"]), percent(r["shape_savings_fraction"]),
                mib(r["measured_exact_savings_bytes"]) if "measured_exact_savings_bytes" in r else "-",
                f"{r['exact_analysis_seconds_median'] * 1000:.1f}",
            ]
            for r in rows
        ],
    ))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "analyze", "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0
