"""Words and numbers in a search's lines: ``plural``, ``short`` (a parameter value), ``span`` (a duration),
``minutes`` (a duration to one decimal),
``share_text`` (a share of the training set)."""

from __future__ import annotations

import json
import math


def plural(count: int, noun: str) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{count} {noun}{'s' * (count != 1)}"


def short(value) -> str:
    """A parameter value for a progress or summary line."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def span(seconds: float) -> str:
    """45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def minutes(seconds: float) -> str:
    """45 s, 5.4 min, 2.3 h: a budget or a time taken."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def share_text(share: float) -> str:
    """1/8, 1/4, 0.3, 1: a share of the training set for the progress lines."""
    inverse = 1.0 / share
    return "1" if share == 1.0 else f"1/{round(inverse)}" if math.isclose(inverse, round(inverse)) else f"{share:g}"
