"""Identifiers: random, URL-safe, sortable-looking ids for snapshots, chunks, sessions."""

from __future__ import annotations

import base64
import os
import re
from datetime import UTC, datetime

__all__ = ["ID_PATTERN", "new_id", "now_iso"]

#: 12 random bytes in Crockford-like base32: 20 characters.
ID_PATTERN = re.compile(r"^[0-9A-Z]{20}$")
_TRANS = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def new_id(length: int = 20) -> str:
    """Return a new random identifier of ``length`` characters (5 random bits each)."""
    return base64.b32encode(os.urandom(-(-length * 5 // 8))).translate(_TRANS).decode()[:length]


def now_iso() -> str:
    """The current UTC time in ISO 8601 with microseconds (the times stored in objects)."""
    return datetime.now(UTC).isoformat()
