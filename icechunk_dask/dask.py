"""Dask-native writes into a session: write + change record per task, tree merge, one commit.

:func:`store_sessions` turns ``dask.array.store``-style writes into a graph in
which every task computes a box of blocks, writes whole Zarr chunks (or
shards) through its own fork of the session and returns that fork's compact
change record; a tree reduction (fan-in ``split_every``) merges the records
of all target arrays, and only the root reaches the client. The assignment of
blocks to tasks is a pure plan (``icechunk_dask._plan``), checked before
anything is written.

With ``compute=False`` the result is also stored in the repository by the
graph's last task, and the session remembers the job: ``dask.compute(lazy)``
followed by ``session.commit()`` commits the data (see
``icechunk_dask._jobs``). With ``resume=<name>`` every task's record is
stored too, and running the same write again recomputes only the tasks
without one.

Importing this module also makes plain ``ds.to_zarr(session.store)`` safe on
a cluster inside ``session.allow_pickling()`` (``icechunk_dask._scheduler``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import dask
import dask.array as da
import zarr
from dask.base import compute, get_scheduler
from dask.delayed import Delayed

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._exceptions import READ_ONLY_MESSAGE, InvalidInputError, ReadOnlyError
from icechunk_dask._jobs import check_plan, done_tasks, plan_fingerprint, validate_job_name
from icechunk_dask._plan import ArrayWrite, WritePlan, normalize_region, plan_writes
from icechunk_dask._scheduler import SPLIT_EVERY, PicklingScheduler
from icechunk_dask._session import Session
from icechunk_dask._store import SessionStore
from icechunk_dask._sync import run
from icechunk_dask._writegraph import TargetSpec, WriteContext, build_write_graph
from icechunk_dask.format import new_id

__all__ = ["store_dask", "store_sessions"]

_STORE_FIXES = ("pass align_chunks=True to write the blocks that share a chunk from one task.",)


# -- public API -------------------------------------------------------------------


@overload
def store_sessions(
    sources: da.Array | Sequence[da.Array],
    targets: zarr.Array[Any] | Sequence[zarr.Array[Any]],
    session: Session,
    *,
    regions: Sequence[tuple[slice, ...] | None] | tuple[slice, ...] | None = ...,
    split_every: int | None = ...,
    align_chunks: bool = ...,
    progress: bool = ...,
    resume: str | None = ...,
    compute: Literal[True] = ...,
) -> None: ...


@overload
def store_sessions(
    sources: da.Array | Sequence[da.Array],
    targets: zarr.Array[Any] | Sequence[zarr.Array[Any]],
    session: Session,
    *,
    regions: Sequence[tuple[slice, ...] | None] | tuple[slice, ...] | None = ...,
    split_every: int | None = ...,
    align_chunks: bool = ...,
    progress: bool = ...,
    resume: str | None = ...,
    compute: Literal[False],
) -> Delayed: ...


def store_sessions(
    sources: da.Array | Sequence[da.Array],
    targets: zarr.Array[Any] | Sequence[zarr.Array[Any]],
    session: Session,
    *,
    regions: Sequence[tuple[slice, ...] | None] | tuple[slice, ...] | None = None,
    split_every: int | None = None,
    align_chunks: bool = False,
    progress: bool = False,
    resume: str | None = None,
    compute: bool = True,
) -> Delayed | None:
    """Write dask arrays into Zarr arrays of a session, from any Dask scheduler.

    Every task computes a box of neighbouring blocks, writes them (whole Zarr
    chunks or shards) through its own fork of ``session`` and returns the
    fork's change record; a tree reduction merges the records of all targets
    and only the merged record reaches the client. Nothing is visible in the
    repository until ``session.commit(...)``; if the computation fails,
    ``session`` is unchanged.

    Parameters
    ----------
    sources : dask.array.Array or sequence of dask.array.Array
        Dask arrays to write (or a single one).
    targets : zarr.Array or sequence of zarr.Array
        Zarr arrays opened on ``session.store`` (or a single one), one per
        source. Create them first, e.g. ``zarr.create_array(session.store, ...)``.
    session : Session
        The writable session that receives the writes.
    regions : tuple of slice, or sequence of (tuple of slice or None), optional
        Where each source goes in its target: a tuple of slices per source
        (``None`` = the whole array), or one tuple for all. Default: each
        source fills its whole target.
    split_every : int or None, optional
        Fan-in of the tree reduction of change records (``None``: 16; at least 2).
    align_chunks : bool, optional
        Blocks whose boundaries fall inside a Zarr chunk (or shard) are
        refused by default (``False``); with ``True`` the blocks that share a
        chunk are written by one task instead.
    progress : bool, optional
        Show a progress bar while computing (dask's for local schedulers,
        distributed's for a cluster). Only with ``compute=True``; default ``False``.
    resume : str or None, optional
        A name for this write job (branch-name rules). Every task then stores
        its change record in the repository (never visible before a commit),
        so that after a crash of the client (or a failed run) the same call
        with the same name recomputes only the tasks without a record.
        Default ``None``: nothing is stored for resuming.
    compute : bool, optional
        Compute now and merge the result into ``session`` (``True``, the
        default), or return a lazy collection (``False``).

    Returns
    -------
    None
        With ``compute=True``: the writes are merged into ``session``; commit
        it to publish them.
    dask.delayed.Delayed
        With ``compute=False``: computing it (``dask.compute``, ``.compute()``,
        ``client.compute(...).result()``, ``persist``) stores the merged
        :class:`~icechunk_dask.ChangeSet` in the repository, and ``commit``
        merges it into ``session``: ``dask.compute(lazy); session.commit()``
        commits the data. The computed record can also be merged explicitly
        (``session.merge(record)``). Computing more than once is harmless; if
        the result never arrives, ``commit`` raises ``UnmergedWritesError``
        naming this write.

    Raises
    ------
    InvalidInputError
        Before anything is written: if the numbers of sources, targets and
        regions differ, shapes or regions do not fit, a target is not Zarr v3
        or has a rectilinear chunk grid, ``split_every`` is below 2, blocks
        would share a Zarr chunk with another task (kind ``unaligned-write``),
        or ``resume`` is not a valid name or names a job that wrote something
        else.
    ReadOnlyError
        If ``session`` is read-only or committed.
    TypeError
        If ``session`` is not a :class:`~icechunk_dask.Session`, a source is not a
        dask array, or a target is not a Zarr array on this session's store.
    StorageError
        If a task cannot store its chunks (with ``compute=True``; ``session``
        is then unchanged).

    Examples
    --------
    >>> arr = zarr.create_array(session.store, name="t", shape=(100, 100), chunks=(10, 10),
    ...                         dtype="f8")  # doctest: +SKIP
    >>> store_sessions([x], [arr], session)  # doctest: +SKIP
    >>> session.commit("write t")  # doctest: +SKIP
    """
    prepared = prepare_write(
        sources,
        targets,
        session,
        regions=regions,
        split_every=split_every,
        group_shared=align_chunks,
        fixes=_STORE_FIXES,
    )
    return launch(
        prepared,
        session._fork(),
        session,
        what=f"store_sessions into {[t.path for t in prepared.targets]}",
        resume=resume,
        compute=compute,
        progress=progress,
    )


def store_dask(
    *,
    sources: list[da.Array],
    targets: list[zarr.Array[Any]],
    regions: list[tuple[slice, ...]] | None = None,
    split_every: int | None = None,
    **store_kwargs: Any,
) -> Session:
    """Icechunk's ``icechunk.dask.store_dask``, for code migrating unchanged.

    Writes ``sources`` into ``targets`` (opened on a fork's store, as with
    Icechunk) with :func:`store_sessions` and returns that fork, holding the
    writes; merge it into its parent (``session.merge(fork)``) and commit.

    Parameters
    ----------
    sources : list of dask.array.Array
        The arrays to write.
    targets : list of zarr.Array
        Zarr arrays opened on one session's store (usually ``session.fork().store``).
    regions : list of tuple of slice or None, optional
        Where each source goes in its target (default: the whole target).
    split_every : int or None, optional
        Fan-in of the merge tree (``None``: 16).
    **store_kwargs : Any
        Only ``scheduler=`` is accepted (the Dask scheduler to compute with).

    Returns
    -------
    Session
        The session the targets are opened on, now holding the writes.

    Raises
    ------
    InvalidInputError
        For another keyword, no target, or (as :func:`store_sessions`)
        arrays that do not fit.
    TypeError
        If the first target is not opened on a session's store, or another
        target is not on the same session's store.
    ReadOnlyError
        If that session is read-only.

    Examples
    --------
    >>> fork = session.fork()  # doctest: +SKIP
    >>> arr = zarr.open_array(fork.store, path="t")  # doctest: +SKIP
    >>> session.merge(store_dask(sources=[x], targets=[arr]))  # doctest: +SKIP
    >>> session.commit("write t")  # doctest: +SKIP
    """
    unsupported = sorted(set(store_kwargs) - {"scheduler"})
    if unsupported:
        raise InvalidInputError(
            f"store_dask does not take {unsupported}; it always computes, without locks "
            "(use store_sessions(..., compute=False) for a lazy write)"
        )
    tgts = list(targets)
    if not tgts:
        raise InvalidInputError("store_dask needs at least one target")
    store = tgts[0].store
    if not isinstance(store, SessionStore):
        raise TypeError("targets must be zarr arrays opened on a session's store (fork.store)")
    session: Session = store.session
    with dask.config.set(store_kwargs):
        store_sessions(sources, tgts, session, regions=regions, split_every=split_every)
    return session


def launch(
    prepared: PreparedWrite,
    base: Session,
    session: Session,
    *,
    what: str,
    resume: str | None,
    compute: bool,
    progress: bool,
) -> Delayed | None:
    """Build the job's graph from ``base`` and compute it into ``session``, or return it.

    Parameters
    ----------
    prepared : PreparedWrite
        The checked plan.
    base : Session
        The fork every task forks (its own changes travel with the result).
    session : Session
        The session that receives the result.
    what : str
        How to name the job in messages.
    resume : str or None
        The name of a resumable job.
    compute : bool
        Compute and merge now, or return the lazy collection.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dask.delayed.Delayed or None
        The lazy collection (``compute=False``).
    """
    assets = session._workspace.assets
    done: frozenset[int] = frozenset()
    if resume is not None:
        job = validate_job_name(resume)
        run(check_plan(assets, job, prepared.fingerprint()))
        done = frozenset(t for t in run(done_tasks(assets, job)) if t < len(prepared.plan.tasks))
    else:
        job = new_id()
    ctx = WriteContext(
        base,
        prepared.targets,
        job=job,
        keep_tasks=resume is not None,
        keep_result=resume is not None or not compute,
    )
    collection = build_write_graph(prepared.plan, prepared.sources, ctx, prepared.split_every, done)
    if not compute:
        session._expect_job(job, f"{what} (compute=False, job {job})")
        return collection
    merge_computed(collection, session, progress=progress)
    return None


# -- building the collection -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A checked plan: nothing has been written yet."""

    plan: WritePlan
    sources: list[da.Array]
    targets: tuple[TargetSpec, ...]
    split_every: int

    def fingerprint(self) -> str:
        """What the job writes, for checking that a resumed job is the same job."""
        return plan_fingerprint(
            {
                "arrays": [
                    [a.name, a.shape, a.unit, [(s.start, s.stop) for s in a.region], a.chunks]
                    for a in self.plan.arrays
                ],
                "metadata": [json.dumps(t.metadata.to_dict(), default=str) for t in self.targets],
                "tasks": len(self.plan.tasks),
            }
        )


def prepare_write(
    sources: da.Array | Sequence[da.Array],
    targets: zarr.Array[Any] | Sequence[zarr.Array[Any]],
    session: Session,
    *,
    regions: Sequence[tuple[slice, ...] | None] | tuple[slice, ...] | None = None,
    split_every: int | None = None,
    group_shared: bool = False,
    fixes: Sequence[str] = _STORE_FIXES,
) -> PreparedWrite:
    """Check the arguments and plan which task writes which blocks (no writes, no graph).

    Raises
    ------
    InvalidInputError
        If shapes or regions do not fit or blocks would share a chunk between tasks.
    ReadOnlyError
        If ``session`` is read-only.
    TypeError
        If sources or targets have the wrong types.
    """
    if not isinstance(sources, da.Array | list | tuple):
        raise TypeError(
            f"sources must be a dask array or a list of them, got {type(sources).__name__}; "
            "write NumPy data directly with target[...] = data"
        )
    srcs = [sources] if isinstance(sources, da.Array) else list(sources)
    tgts = [targets] if isinstance(targets, zarr.Array) else list(targets)
    if len(srcs) != len(tgts):
        raise InvalidInputError(
            f"got {len(srcs)} sources but {len(tgts)} targets; pass one target per source"
        )
    regs = _normalize_regions(regions, len(srcs))
    check_writable_session(session, "writing")
    split: object = SPLIT_EVERY if split_every is None else split_every
    if not isinstance(split, int) or split < 2:
        raise InvalidInputError(f"split_every must be an int >= 2, got {split_every!r}")
    writes, specs = [], []
    for i, (src, tgt, reg) in enumerate(zip(srcs, tgts, regs, strict=True)):
        if not isinstance(src, da.Array):
            raise TypeError(
                f"source {i} must be a dask array, got {type(src).__name__}; write numpy data "
                "directly with target[...] = data"
            )
        writes.append(_array_write(src, _check_target(tgt, session, i), reg))
        specs.append(TargetSpec(tgt.path, tgt.metadata, tgt.async_array.config))  # type: ignore[arg-type]
    plan = plan_writes(writes, group_shared=group_shared, fixes=fixes)
    return PreparedWrite(plan, srcs, tuple(specs), split)


def check_writable_session(session: object, what: str) -> None:
    """Refuse anything but a writable :class:`Session` (``what`` names the caller)."""
    if not isinstance(session, Session):
        raise TypeError(f"session must be an icechunk_dask.Session, got {type(session).__name__}")
    if session.read_only:
        raise ReadOnlyError(
            f"{READ_ONLY_MESSAGE}: {what} needs a writable session; start one with "
            "repo.writable_session(branch)"
        )


def _normalize_regions(
    regions: Sequence[tuple[slice, ...] | None] | tuple[slice, ...] | None, n: int
) -> list[tuple[slice, ...] | None]:
    if regions is None:
        return [None] * n
    if isinstance(regions, tuple) and all(isinstance(r, slice) for r in regions):
        return [regions] * n
    out = list(regions)
    if len(out) != n:
        raise InvalidInputError(f"got {len(out)} regions for {n} sources; pass one per source")
    return out  # type: ignore[return-value]


def _check_target(target: object, session: Session, i: int) -> zarr.Array[Any]:
    if not isinstance(target, zarr.Array):
        raise TypeError(
            f"target {i} must be a zarr.Array opened on session.store, got {type(target).__name__}"
        )
    store = target.store
    if not isinstance(store, SessionStore) or store.session.session_id != session.session_id:
        raise TypeError(
            f"target {i} ({target.path!r}) is not opened on this session's store (it is on "
            f"{store!r}); open it with zarr.open_array(session.store, path=...)"
        )
    if target.metadata.zarr_format != 3:
        raise InvalidInputError(f"target {i} ({target.path!r}) must be a Zarr v3 array")
    return target


def _array_write(
    src: da.Array, tgt: zarr.Array[Any], region: tuple[slice, ...] | None
) -> ArrayWrite:
    try:
        chunks = tgt.chunks
        shards = tgt.shards
    except NotImplementedError:
        raise InvalidInputError(
            f"array {tgt.path!r} has a rectilinear (variable) chunk grid, which the Dask writers "
            "do not support yet; nothing was written. Write it with zarr directly "
            "(array[...] = values through session.store, which stores any grid), or create "
            "the array with a regular grid (one chunk shape)"
        ) from None
    reg = normalize_region(region, tgt.shape, src.shape, tgt.path)
    return ArrayWrite(
        name=tgt.path,
        shape=tgt.shape,
        unit=shards or chunks,
        region=reg,
        chunks=src.chunks,
        itemsize=max(1, src.dtype.itemsize),
        sharded=shards is not None,
    )


# -- computing --------------------------------------------------------------------------


def merge_computed(collection: Delayed, session: Session, *, progress: bool = False) -> None:
    """Compute a collection that yields a change record and merge it into ``session``.

    Parameters
    ----------
    collection
        What ``store_sessions(..., compute=False)`` or ``to_zarr(..., compute=False)`` returned.
    session
        The session to merge into.
    progress
        Show a progress bar (dask's, or distributed's on a cluster).
    """
    record = _compute(collection, progress)
    session.merge(record)


def _compute(collection: Delayed, progress: bool) -> ChangeSet:
    if not progress:
        (result,) = compute(collection)
        return result  # type: ignore[no-any-return]
    from distributed import Client
    from distributed import progress as distributed_progress

    scheduler = get_scheduler(collections=[collection])
    if isinstance(scheduler, PicklingScheduler):
        scheduler = scheduler.inner()
    client = getattr(scheduler, "__self__", None)
    if isinstance(client, Client):
        future = client.compute(collection)
        distributed_progress(future, scheduler=client.scheduler_info()["address"])
        return future.result()  # type: ignore[no-any-return]
    from dask.diagnostics.progress import ProgressBar

    with ProgressBar():
        (result,) = compute(collection)
    return result  # type: ignore[no-any-return]
