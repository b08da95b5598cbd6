"""The client-side scheduler wrapper that ``allow_pickling`` uses on a cluster.

Inside ``with session.allow_pickling():`` a plain ``ds.to_zarr(session.store)``
on a distributed cluster pickles the session into its tasks; each task's
copy records that task's writes. :class:`PicklingScheduler` reroutes such
graphs (:func:`~icechunk_dask._reroute.reroute_session_writes`) so that the
copies' records come back and are merged into their session when the
computation ends.

The wrapper is installed in dask's ``scheduler`` setting while at least one
``allow_pickling`` block is open anywhere in the process, and removed when
the last one closes (unless the setting was changed meanwhile). *Which*
sessions it serves is a ``contextvars`` variable: each thread (and each
asyncio task) sees only the sessions of its own open blocks, so two threads
with two sessions, leaving their blocks in any order, never see each
other's session.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import dask
import dask.threaded
from dask.base import get_scheduler
from dask.local import get_sync
from dask.typing import Key

from icechunk_dask._compat.dask import convert_legacy_graph
from icechunk_dask._session import ALLOW_PICKLING_HOOKS, Session
from icechunk_dask._sync import run

__all__ = ["SPLIT_EVERY", "PicklingScheduler", "inner_scheduler", "register_pickling_hook"]

#: Default fan-in of the tree reductions that merge change records.
SPLIT_EVERY = 16

_LOCAL_SCHEDULERS: tuple[Callable[..., Any], ...] = (dask.threaded.get, get_sync)

#: The sessions whose ``allow_pickling`` blocks are open in the current context.
_OPEN: ContextVar[tuple[Session, ...]] = ContextVar("icechunk_dask_pickling", default=())


def inner_scheduler(previous: object = None) -> Callable[..., Any]:
    """The scheduler that runs a graph when no wrapper is in the way."""
    if previous is not None:
        return get_scheduler(scheduler=previous)  # type: ignore[no-any-return]
    try:
        from distributed import get_client  # optional at import time: a cluster may not exist

        return get_client().get
    except (ImportError, ValueError):
        return dask.threaded.get


class PicklingScheduler:
    """A ``scheduler=`` callable that brings back writes made by worker-side session copies.

    With a scheduler that runs tasks in this process (threads, synchronous),
    or when no ``allow_pickling`` block is open in the calling context, it
    changes nothing.
    """

    def __init__(self) -> None:
        self.previous: object = None

    def inner(self) -> Callable[..., Any]:
        """The scheduler that would run the graph without this wrapper."""
        return inner_scheduler(self.previous)

    def __call__(self, graph: Any, keys: Sequence[Key], **kwargs: Any) -> Any:
        inner = self.inner()
        sessions = [s for s in _OPEN.get() if not s.read_only]
        if inner in _LOCAL_SCHEDULERS or not sessions:
            return inner(graph, keys, **kwargs)
        # the rerouting machinery imports zarr's array layer and dask.array: only when needed
        from icechunk_dask._reroute import reconcile_markers, reroute_session_writes

        dsk = convert_legacy_graph(graph if isinstance(graph, Mapping) else graph.__dask_graph__())
        roots: list[tuple[Session, Key]] = []
        for session in sessions:
            rerouted = reroute_session_writes(dsk, session, split_every=SPLIT_EVERY)
            if rerouted is not None:
                dsk, root = rerouted
                roots.append((session, root))
        if not roots:
            return inner(graph, keys, **kwargs)
        out = inner(dsk, [*keys, *(root for _, root in roots)], **kwargs)
        results, records = out[: len(keys)], out[len(keys) :]
        for (session, _), record in zip(roots, records, strict=True):
            session.merge(record)
            run(reconcile_markers(session, record))
        return results


_WRAPPER = PicklingScheduler()
_LOCK = threading.Lock()
_state: dict[str, Any] = {"open": 0, "restore": None}


def _install() -> None:
    with _LOCK:
        _state["open"] += 1
        if _state["open"] == 1:
            _WRAPPER.previous = dask.config.get("scheduler", None)
            cm = dask.config.set(scheduler=_WRAPPER)
            _state["restore"] = cm


def _uninstall() -> None:
    with _LOCK:
        _state["open"] -= 1
        if _state["open"] == 0:
            cm = _state["restore"]
            _state["restore"] = None
            # leave a setting someone else made meanwhile alone
            if cm is not None and dask.config.get("scheduler", None) is _WRAPPER:
                cm.__exit__(None, None, None)


@contextlib.contextmanager
def _scheduler_hook(session: Session) -> Iterator[None]:
    token = _OPEN.set((*_OPEN.get(), session))
    _install()
    try:
        yield
    finally:
        _OPEN.reset(token)
        _uninstall()


def register_pickling_hook() -> None:
    """Make ``allow_pickling`` install the wrapper (idempotent)."""
    if _scheduler_hook not in ALLOW_PICKLING_HOOKS:
        ALLOW_PICKLING_HOOKS.append(_scheduler_hook)


register_pickling_hook()
