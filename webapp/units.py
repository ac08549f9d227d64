"""Template filters for the units every page uses: bytes in MiB, shares in percent (built into every template)."""

from __future__ import annotations

import math

from django import template

register = template.Library()

MIB = 1 << 20


@register.filter
def mib(num_bytes: object) -> str:
    """Return ``num_bytes`` as MiB with one decimal ("42.6 MiB"), or "—" when it is not a number."""
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int | float) or not math.isfinite(num_bytes):
        return "—"
    return f"{num_bytes / MIB:.1f} MiB"


@register.filter
def percent(share: object) -> str:
    """Return a share in [0, 1] as a percentage with one decimal ("32.9%"), or "—" when it is not a number."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
        return "—"
    return f"{100 * share:.1f}%"
