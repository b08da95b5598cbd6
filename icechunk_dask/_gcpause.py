"""Pause Python's cyclic garbage collector while a big commit builds its manifests.

A commit of millions of references allocates lists of millions of items
while millions of reference tuples are alive; each young collection then
walks those lists and tuples again. Measured on a 10M-reference commit:
1.15 s of 17 s in 4 collections (``bench/RESULTS.md``). Reference counting
still frees everything a commit drops; only reference cycles wait for the
collector, which is enabled again when the last pause ends (the pause is
process-wide, counted across threads, and never enables a collector the
application had disabled).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["PAUSE_GC_FROM", "gc_paused"]

#: Commits of at least this many chunk changes pause the collector while they write.
PAUSE_GC_FROM = 100_000

_LOCK = threading.Lock()
_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Disable the cyclic garbage collector inside the block (if ``pause``)."""
    global _pauses, _was_enabled
    if not pause:
        yield
        return
    with _LOCK:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _LOCK:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
