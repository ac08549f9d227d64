"""Plain-text tables and byte formatting shared by the CLI and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

MIB = 1024 * 1024


def mib(num_bytes: int | float) -> str:
    """Return ``num_bytes`` in MiB with one decimal, e.g. ``"44.7"``."""
    return f"{num_bytes / MIB:.1f}"


def percent(fraction: float) -> str:
    """Return ``fraction`` as a percentage with one decimal, e.g. ``"34.4%"``."""
    return f"{fraction * 100:.1f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return ``rows`` under ``headers`` as an aligned plain-text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(row) for row in cells[1:])])


def _looks_numeric(text: str) -> bool:
    stripped = text.rstrip("%x").replace(",", "").replace("/", "")
    try:
        float(stripped)
    except ValueError:
        return False
    return True
