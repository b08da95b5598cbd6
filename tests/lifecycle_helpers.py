"""Helpers for the lifecycle tests (expire, garbage collection, verify)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def age(root: Path, seconds: float = 3600.0, *, under: str = "") -> int:
    """Make every file below ``root / under`` look ``seconds`` older; return how many.

    Garbage collection only deletes what was written before its cutoff (which it
    rounds down to a whole second): aging files stands in for waiting.
    """
    when = time.time() - seconds
    n = 0
    for dirpath, _dirs, files in os.walk(root / under if under else root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (when, when))
            n += 1
    return n


def files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = path.read_bytes()
    return out
