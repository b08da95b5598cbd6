"""Run the async core from synchronous public methods, on one I/O event loop thread.

The loop is started on first use (importing the package starts nothing) in a
daemon thread, like zarr's own: synchronous callers in any thread submit
coroutines to it and wait. A process forked from this one starts its own. Calling :func:`run` from a coroutine running on
that loop would deadlock, so it raises instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["run"]

_LOCK = threading.Lock()
_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    with _LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="icechunk_dask-io", daemon=True)
            thread.start()
            _LOOP = loop
        return _LOOP


def _forget_after_fork() -> None:
    # a forked child has the loop object but not its thread: start a new one when needed
    global _LOCK, _LOOP
    _LOCK = threading.Lock()
    _LOOP = None


os.register_at_fork(after_in_child=_forget_after_fork)


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the package's I/O event loop and return its result.

    Raises
    ------
    RuntimeError
        If called from a coroutine running on that loop (it would wait for itself).
    """
    loop = _loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(
            "icechunk_dask's synchronous API was called from its own event loop; await the "
            "asynchronous code instead"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result()
