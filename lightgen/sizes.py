"""Data sizes as people write them: ``100k``, ``2M``, ``100000`` (and back to a nominal label)."""

from __future__ import annotations

import re
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*$")
_SIZE_MULT = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_size(value: Any) -> int:
    """Parse a data size: ``100k`` → 100000, ``2M`` → 2000000, ``100000`` → 100000."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 100k, 2M or 100000, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number of items, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            n = float(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
            if n.is_integer():
                return int(n)
    raise ValueError(f"expected a size like 100k, 2M or 100000, got {value!r}")


def size_label(n: int) -> str:
    """The nominal label of a size: 100000 → '100K', 2000000 → '2M', 1500 → '1.5K'."""
    for div, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= div:
            v = n / div
            return (f"{v:.0f}" if v.is_integer() else f"{v:g}") + suffix
    return str(n)
