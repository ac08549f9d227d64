"""Benchmarks users run on their own machine: ``python -m gemel_engine bench NAME [--help]``.

Each benchmark prints a table and writes JSON; figures are medians over repeats where time is measured.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from gemel_engine.errors import UsageError

BENCHMARKS = {
    "analyze": "gemel_engine.bench.analyze",
    "merge": "gemel_engine.bench.merge",
    "runtime": "gemel_engine.bench.runtime",
}


def run_benchmark(name: str, argv: Sequence[str]) -> int:
    """Run benchmark ``name`` with its own command-line ``argv``; return its exit status.

    Raises:
        UsageError: ``name`` is not a known benchmark.
    """
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    module = importlib.import_module(BENCHMARKS[name])
    return module.main(list(argv))


def registered_names(parser: argparse.ArgumentParser, raw: str, known: Sequence[str], what: str) -> list[str]:
    """Return the comma-separated names in ``raw``; exit through ``parser.error`` naming any not in ``known``."""
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names
