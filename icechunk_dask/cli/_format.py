"""Output helpers of the command line: tables, sizes, times, JSON or lines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

__all__ = ["emit", "shape", "size", "table", "when"]


def when(ts: datetime) -> str:
    """A time for people."""
    return ts.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def size(n: int | None) -> str:
    """A byte count for people (decimal units)."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def shape(dims: Sequence[int]) -> str:
    """A shape as Python writes a tuple."""
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows aligned in columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def emit(args: argparse.Namespace, doc: Any, lines: list[str]) -> int:
    """Print ``doc`` as JSON (``--json``) or ``lines``; return 0."""
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(lines))
    return 0
