"""The fork and pickling protocol: what a session copy carries, and how lost copies are caught.

A fork (``session.fork()``, or a copy unpickled from a session inside
``allow_pickling()``) sees its parent's uncommitted state and records only
its own changes, which come back through ``merge``. Its pickled form is
O(metadata): the repository, the base snapshot, the parent's uncommitted
metadata documents, and, if the parent had uncommitted chunk writes, the key
of a small *scratch* object that lists them (stored once per version).

Every unpickled copy is *tracked*: before its first change it leaves a marker
``sessions/<session id>/<writer id>`` in storage, and its change records name
their writers. ``commit`` lists the markers and refuses (UnmergedWritesError)
if a writer's changes never came back.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from types import FrameType

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask.format import ChunkRef, NodeManifests, decode_scratch, encode_scratch, new_id

__all__ = [
    "PICKLING_MESSAGE",
    "UNMERGED_FORK_MESSAGE",
    "UNMERGED_MESSAGE",
    "Family",
    "ForkState",
    "ForkTicket",
    "clear_markers",
    "leave_marker",
    "list_markers",
    "load_scratch",
    "pickled_by_distributed",
    "remove_markers",
    "store_scratch",
    "unmerged_writers",
]

PICKLING_MESSAGE = (
    "A writable session cannot be pickled without opting in: a copy sent to another "
    "process (a Dask worker, a process pool) records its writes in its own change set, and "
    "they are lost unless that copy comes back and is merged. Choose one:\n"
    "  * icechunk_dask.to_zarr(ds, session) or icechunk_dask.store_sessions(...) for Dask "
    "arrays: they fork, write and merge for you;\n"
    "  * session.fork() for a picklable child whose changes you merge back with "
    "session.merge(...);\n"
    "  * 'with session.allow_pickling():' to send the session itself, then return the "
    "copies and merge them with merge_sessions(session, *copies) before commit.\n"
    "To only read data, pass repo.readonly_session(...) instead."
)

UNMERGED_MESSAGE = (
    "pickled copies of this session wrote data that was never merged back, so committing "
    "now would silently lose it. Return the sessions from your tasks and call "
    "merge_sessions(session, *returned) (or session.merge(...)) before commit; with Dask use "
    "icechunk_dask.to_zarr / store_sessions, or run ds.to_zarr(session.store) inside "
    "'with session.allow_pickling():'. To drop those writes deliberately, start a new session"
)


UNMERGED_FORK_MESSAGE = (
    "made with session.fork() wrote data that was never merged back, so committing now "
    "would silently lose it. Merge them first (session.merge(fork)), or drop their writes "
    "deliberately with fork.discard_changes()"
)


@dataclass(slots=True)
class ForkTicket:
    """An in-process fork made by ``session.fork()``, as the session family sees it.

    Attributes
    ----------
    writer : str
        The fork's writer id (its records name it).
    dirty : bool
        Whether the fork has changed something (and so must be merged).
    """

    writer: str
    dirty: bool = False


class Family:
    """What a session and its in-process forks share: the tickets of the public forks.

    ``commit`` refuses while a fork that changed something was never merged
    (its writer id is not among the committed change set's writers).
    """

    def __init__(self) -> None:
        self.tickets: dict[str, ForkTicket] = {}

    def ticket(self, writer: str) -> ForkTicket:
        """Register a new fork; return its ticket."""
        ticket = self.tickets[writer] = ForkTicket(writer)
        return ticket

    def unmerged(self, writers: set[str]) -> list[str]:
        """Writers of forks that changed something not in ``writers``."""
        return sorted(
            t.writer for t in self.tickets.values() if t.dirty and t.writer not in writers
        )


@dataclass(frozen=True, slots=True)
class ForkState:
    """Everything a pickled fork carries.

    Attributes
    ----------
    assets : AssetManager
        The repository (pickles by location, shared per process).
    base : str
        The base snapshot.
    branch : str or None
        The branch the root session commits to.
    session_id : str
        Shared by a session and all its copies.
    meta : dict
        Uncommitted metadata documents inherited from the parent.
    scratch : str or None
        Key of the scratch object listing inherited uncommitted chunk references.
    own : bytes or None
        The copy's own change record (forks travel with their changes).
    cleared : frozenset of str
        Prefixes the parent deleted with ``delete_dir`` (uncommitted).
    layers : dict of str to NodeManifests
        The parent's pre-built manifest layers (uncommitted), by node.
    """

    assets: AssetManager
    base: str
    branch: str | None
    session_id: str
    meta: dict[str, bytes | None]
    scratch: str | None
    own: bytes | None
    cleared: frozenset[str] = frozenset()
    layers: dict[str, NodeManifests] = field(default_factory=dict)


async def store_scratch(assets: AssetManager, base: str, chunks: dict[str, ChunkRef | None]) -> str:
    """Store uncommitted chunk references a pickled fork must be able to read; return the key."""
    key = f"scratch/{new_id()}"
    await assets.storage.put(key, encode_scratch(base, chunks))
    return key


async def load_scratch(assets: AssetManager, key: str) -> dict[str, ChunkRef | None]:
    """Read back what :func:`store_scratch` stored."""
    return decode_scratch(await assets.storage.get(key), key)


def pickled_by_distributed() -> bool:
    """Whether the caller's pickling runs inside distributed's graph serialization."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return False
        if str(frame.f_globals.get("__name__", "")).startswith("distributed.protocol"):
            return True
        frame = frame.f_back
    return False


def _marker_prefix(session_id: str) -> str:
    return f"sessions/{session_id}/"


async def leave_marker(assets: AssetManager, session_id: str, writer: str, task: str = "") -> None:
    """Record in storage that ``writer`` (a tracked copy) is about to change something.

    ``task`` names the Dask task the copy works for, when it is known.
    """
    await assets.storage.put(_marker_prefix(session_id) + writer, task.encode())


async def list_markers(assets: AssetManager, session_id: str) -> dict[str, str]:
    """The markers of a session: writer -> the task it worked for ("" if unknown)."""
    prefix = _marker_prefix(session_id)
    keys = await assets.storage.list(prefix)
    bodies = await asyncio.gather(*(assets.storage.get(k) for k in keys))
    return {k[len(prefix) :]: b.decode() for k, b in zip(keys, bodies, strict=True)}


async def remove_markers(assets: AssetManager, session_id: str, writers: list[str]) -> None:
    """Delete the markers of ``writers``."""
    if writers:
        prefix = _marker_prefix(session_id)
        await assets.storage.delete(prefix + w for w in writers)


async def unmerged_writers(assets: AssetManager, session_id: str, cs: ChangeSet) -> list[str]:
    """Writers that left a marker for this session but whose changes are not in ``cs``."""
    prefix = _marker_prefix(session_id)
    found = {k[len(prefix) :] for k in await assets.storage.list(prefix)}
    return sorted(found - cs.writers)


async def clear_markers(assets: AssetManager, session_id: str, writers: set[str]) -> None:
    """Delete the markers of writers whose changes were committed."""
    prefix = _marker_prefix(session_id)
    await assets.storage.delete(prefix + w for w in writers)
