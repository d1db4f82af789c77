"""Bytes, rates and durations for people, the same in the CLI and in the worker log."""

from __future__ import annotations

import math


def format_size(size: float) -> str:
    """``size`` bytes for people: ``512 B``, ``64.0 KiB``, ``4.0 MiB`` (binary multiples)."""
    if size < 1024:
        return f"{int(size)} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_rate(nbytes: int, seconds: float) -> str:
    """Average throughput, ``12.5 MiB/s``; ``0 B/s`` before any time has passed."""
    return f"{format_size(nbytes / seconds if seconds > 0 else 0)}/s"


def format_duration(seconds: float) -> str:
    """``0s``, ``42s``, ``3m 05s``, ``2h 01m 09s``: whole seconds, rounded up."""
    total = math.ceil(max(seconds, 0.0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def percent(part: int, whole: int) -> int:
    """``part`` of ``whole`` in whole percent, rounded down; 100 for an empty whole."""
    return 100 if whole <= 0 else min(100, part * 100 // whole)
