"""Identifiers: random, URL-safe, sortable-looking ids for snapshots, chunks, sessions."""

from __future__ import annotations

import base64
import os
import re

__all__ = ["ID_PATTERN", "new_id"]

#: 12 random bytes in Crockford-like base32: 20 characters.
ID_PATTERN = re.compile(r"^[0-9A-Z]{20}$")
_TRANS = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def new_id(length: int = 20) -> str:
    """Return a new random identifier of ``length`` characters (5 random bits each)."""
    return base64.b32encode(os.urandom(-(-length * 5 // 8))).translate(_TRANS).decode()[:length]
