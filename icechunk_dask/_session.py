"""Session: a view of one snapshot that records changes and commits them atomically.

A writable session records every write in its change set. Chunk bytes go to
storage as they are written; only references stay in memory, so what a
worker sends back is small. ``commit`` publishes all of it at once by
appending one entry to the branch's create-only log, rebasing onto commits
that landed meanwhile when they do not conflict.

Forks (``fork()``, or pickled copies made under ``allow_pickling()``) see
their parent's uncommitted state and record only their own changes, which
``merge`` brings back (see :mod:`icechunk_dask._fork`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._commit import commit_changes, validate_metadata
from icechunk_dask._conflicts import ConflictDetector, ConflictSolver
from icechunk_dask._diff import Diff, session_diff
from icechunk_dask._exceptions import (
    InvalidInputError,
    NoChangesToCommitError,
    PicklingNotAllowedError,
    SessionStateError,
    UnmergedWritesError,
)
from icechunk_dask._fork import (
    PICKLING_MESSAGE,
    UNMERGED_FORK_MESSAGE,
    UNMERGED_MESSAGE,
    Family,
    ForkState,
    pickled_by_distributed,
    store_scratch,
    unmerged_writers,
)
from icechunk_dask._jobs import delete_jobs, load_result
from icechunk_dask._prebuilt import LoadedBoxes, layered_keys, merge_loaded, preload
from icechunk_dask._store import SessionStore
from icechunk_dask._sync import run
from icechunk_dask._workspace import Workspace
from icechunk_dask.format import new_id

__all__ = ["ALLOW_PICKLING_HOOKS", "ForkSession", "Session"]

#: Context-manager factories entered (outermost level only) by ``Session.allow_pickling``.
#: ``icechunk_dask.dask`` registers one that makes plain ``ds.to_zarr(session.store)``
#: bring worker-side writes back on a distributed cluster.
ALLOW_PICKLING_HOOKS: list[Callable[[Session], contextlib.AbstractContextManager[None]]] = []


class Session:
    """A view of one snapshot, writable or not, that records and commits changes.

    Sessions are made by :meth:`Repository.writable_session` and
    :meth:`Repository.readonly_session`; do not construct them directly (the
    parameters below are internal). Read and write through :attr:`store`
    (zarr, xarray); publish the writes with :meth:`commit`.

    Methods that read the repository can also raise
    :class:`~icechunk_dask.StorageError` (the backend failed) and
    :class:`~icechunk_dask.CorruptObjectError` (a stored object is damaged).

    Parameters
    ----------
    assets : icechunk_dask._assets.AssetManager
        The repository's objects.
    snapshot_id : str
        The snapshot the session starts from.
    branch : str or None
        The branch it commits to (``None`` for snapshot views).
    read_only : bool
        Whether writes are refused.
    session_id : str or None, optional
        The id shared with the session's forks and copies (default: a new one).
    tracked : bool, optional
        Whether the session is a worker-side copy that marks its first write,
        so that ``commit`` can tell whether its changes came back (default
        ``False``).

    Examples
    --------
    >>> session = repo.writable_session("main")  # doctest: +SKIP
    >>> ds.to_zarr(session.store, mode="w", consolidated=False)  # doctest: +SKIP
    >>> session.commit("first write")  # doctest: +SKIP
    """

    def __init__(
        self,
        assets: AssetManager,
        snapshot_id: str,
        *,
        branch: str | None,
        read_only: bool,
        session_id: str | None = None,
        tracked: bool = False,
    ) -> None:
        self._workspace = Workspace(
            assets,
            snapshot_id,
            session_id=session_id or new_id(),
            read_only=read_only,
            tracked=tracked,
        )
        self._branch = branch
        self._family = Family()
        #: lazy write jobs built from this session: job id -> description
        self._lazy_jobs: dict[str, str] = {}
        #: snapshots of commit attempts whose branch entry may have landed unacknowledged
        self._maybe_landed: set[str] = set()
        self._pickle_depth = 0
        self._scratch_cache: tuple[int, str] | None = None
        self._store: SessionStore | None = None

    # -- properties -----------------------------------------------------------

    @property
    def store(self) -> SessionStore:
        """The Zarr store through which this session reads and writes."""
        if self._store is None:
            self._store = SessionStore(self)
        return self._store

    @property
    def branch(self) -> str | None:
        """The branch this session commits to (``None`` for snapshot views)."""
        return self._branch

    @property
    def snapshot_id(self) -> str:
        """The snapshot the session is based on (after commit: the new snapshot)."""
        return self._workspace.base

    @property
    def session_id(self) -> str:
        """Id shared by a session, its forks and its pickled copies."""
        return self._workspace.session_id

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (read-only sessions, and sessions after commit)."""
        return self._workspace.read_only

    @property
    def is_fork(self) -> bool:
        """Whether this is a fork or a pickled copy (it merges back; it cannot commit)."""
        return False

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether this session holds changes of its own."""
        return bool(self._workspace.cs)

    def __repr__(self) -> str:
        ws = self._workspace
        kind = "read-only" if ws.read_only else ("fork" if self.is_fork else "writable")
        return (
            f"<{type(self).__name__} {kind} branch={self._branch!r} snapshot={ws.base} "
            f"changes={len(ws.cs)}>"
        )

    # -- status ---------------------------------------------------------------

    def status(self) -> Diff:
        """What this session changed (metadata inherited by a fork included).

        Returns
        -------
        Diff
            Groups and arrays created, deleted or updated, and the coordinates
            of the chunks written or deleted, per array.
        """
        ws = self._workspace
        snap = run(ws.assets.get_snapshot(ws.base, expired_ok=True))
        with ws.lock:
            meta = {**ws.inh_meta, **ws.cs.meta}
            keys = list(ws.cs.chunks)
            layers = ws.cs.layers
        if layers:
            keys.extend(run(layered_keys(ws.assets, layers)).keys() - set(keys))
        return session_diff(snap, meta, keys)

    def discard_changes(self) -> None:
        """Drop every uncommitted change of this session (and forget its lazy writes).

        Raises
        ------
        ReadOnlyError
            If the session is read-only or committed.
        """
        self._workspace.check_writable()
        self._workspace.discard()
        self._lazy_jobs.clear()

    def _expect_job(self, job: str, what: str) -> None:
        """Remember a lazy write job built from this session (its result is merged at commit)."""
        self._lazy_jobs[job] = what

    def _collect_jobs(self) -> None:
        """Merge the stored results of lazy jobs that were computed but not merged.

        Raises
        ------
        UnmergedWritesError
            Naming the lazy writes whose result never arrived.
        """
        ws = self._workspace
        with ws.lock:
            pending = {j: w for j, w in self._lazy_jobs.items() if j not in ws.cs.jobs}
        missing = []
        for job, what in pending.items():
            result = run(load_result(ws.assets, job))
            if result is None:
                missing.append(what)
            else:
                self.merge(result)
        if missing:
            raise UnmergedWritesError(
                f"{len(missing)} lazy write(s) built from this session never delivered their "
                f"result: {'; '.join(missing)}. Compute them before commit (dask.compute(...) "
                "and wait for any distributed future), or call session.discard_changes() "
                "to drop them deliberately. Nothing was committed"
            )

    # -- fork / merge ---------------------------------------------------------

    def fork(self) -> ForkSession:
        """Return a picklable child that sees this session's uncommitted state.

        The child records only its own changes; bring them back with
        :meth:`merge`. ``commit`` refuses while a fork that changed something
        in this process was never merged (copies of it in other processes are
        tracked too, see :meth:`allow_pickling`). Forking does no I/O unless
        this session holds uncommitted small chunks in its open pack (stored
        first, so the child can read them) or a pickled fork must carry
        uncommitted chunk writes of its parent (then they are stored once, as a
        small scratch object, when the fork is first pickled).

        Returns
        -------
        ForkSession
            A fork: writable, picklable, cannot commit.

        Raises
        ------
        SessionStateError
            If this session is read-only or committed.
        """
        child = self._fork()
        child._workspace.ticket = self._family.ticket(child._workspace.writer)
        return child

    def _fork(self) -> ForkSession:
        """A fork for internal use (Dask tasks, to_zarr's stage): not checked at commit."""
        ws = self._workspace
        if ws.read_only:
            raise SessionStateError(
                "cannot fork a read-only or committed session; forks are for writing. Use "
                "repo.writable_session(branch).fork()"
            )
        # load what this session inherited before taking the lock: the load runs on the
        # event loop, whose coroutines take the same lock
        inherited = run(ws.inherited_chunks()) if ws.cs.chunks else None
        child = ForkSession(
            ws.assets, ws.base, branch=self._branch, read_only=False, session_id=ws.session_id
        )
        child._family = self._family
        cw = child._workspace
        with ws.lock:
            pending = ws.packs.close_locked()  # the child must be able to read every ref
            own_meta, own_chunks = ws.cs.meta, ws.cs.chunks
            cw.inh_meta = {**ws.inh_meta, **own_meta} if own_meta else ws.inh_meta
            cw.inh_cleared = ws.inh_cleared | ws.cs.cleared
            cw.inh_layers = {**ws.inh_layers, **ws.cs.layers}
            if not own_chunks:
                cw.inh_chunks, cw.inh_scratch = ws.inh_chunks, ws.inh_scratch
            else:
                cw.inh_chunks = {**(inherited or {}), **own_chunks}
                cw.inh_scratch = None
        ws.packs.ensure_stored(pending)
        return child

    def changes(self) -> ChangeSet:
        """Return a compact, picklable record of this session's own changes.

        Pure: the session keeps its changes. Small chunks still buffered in
        the session's open pack are stored first, because the record points
        into it. A Dask task returns this record; :meth:`merge` accepts it.

        Returns
        -------
        ChangeSet
            A copy of the session's change set.
        """
        return self._workspace.changes()

    def merge(self, *others: Session | ChangeSet) -> None:
        """Merge forks, pickled copies or change records into this session, in place.

        All or nothing: if any record cannot be merged, the session is unchanged.

        Parameters
        ----------
        *others : Session or ChangeSet
            Forks or copies of this session, or change records.

        Raises
        ------
        InvalidInputError
            If a record belongs to another repository or another base snapshot.
        ConflictError
            If two records wrote different bytes to one chunk, or conflicting metadata.
        ReadOnlyError
            If this session is read-only or committed.
        TypeError
            If an argument is neither a Session nor a ChangeSet.
        """
        ws = self._workspace
        ws.check_writable()
        records: list[ChangeSet] = []
        for other in others:
            if isinstance(other, Session):
                if other is not self:
                    records.append(other.changes())
            elif isinstance(other, ChangeSet):
                records.append(other)
            else:
                raise TypeError(
                    f"merge accepts Session and ChangeSet objects, got {type(other).__name__}"
                )
        cache: LoadedBoxes = {}
        while True:
            with ws.lock:
                ws.check_writable()
                # a session that inherited uncommitted chunks keeps no layers of its own
                merged, needs = merge_loaded(ws.cs, records, cache, flatten=ws.inherits)
                if merged is not None:
                    ws.cs = merged
                    ws.chunks_version += 1
                    return
            run(preload(ws.assets, needs, cache))  # pre-built layers both sides change

    # -- pickling -------------------------------------------------------------

    @contextlib.contextmanager
    def allow_pickling(self) -> Iterator[None]:
        """Allow this writable session to be pickled inside the block (nestable).

        Every unpickled copy is a fork that records its own writes and must be
        returned and merged (``merge_sessions(session, *copies)``) before
        :meth:`commit`; commit refuses to proceed if a copy wrote data that
        never came back.

        Yields
        ------
        None
            Nothing; pickling is allowed until the block ends.
        """
        ws = self._workspace
        with ws.lock:
            self._pickle_depth += 1
            outer = self._pickle_depth == 1
        stack = contextlib.ExitStack()
        try:
            if outer:
                for hook in ALLOW_PICKLING_HOOKS:
                    stack.enter_context(hook(self))
            yield
        finally:
            stack.close()
            with ws.lock:
                self._pickle_depth -= 1

    @property
    def pickling_allowed(self) -> bool:
        """Whether this session may be pickled now."""
        return self.read_only or self.is_fork or self._pickle_depth > 0

    def _scratch_key(self, chunks: dict[str, Any], version: int) -> str | None:
        if not chunks:
            return None
        cached = self._scratch_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        ws = self._workspace
        key = run(store_scratch(ws.assets, ws.base, chunks))
        self._scratch_cache = (version, key)
        return key

    def _fork_state(self) -> ForkState:
        """What an unpickled copy of this session carries (stores packs and scratch first)."""
        ws = self._workspace
        with ws.lock:
            pending = ws.packs.close_locked()
            # a copy of a root session: the root's changes become the copy's inheritance
            meta = {**ws.inh_meta, **ws.cs.meta}
            inherited = dict(ws.cs.chunks)
            version = ws.chunks_version
            cleared = ws.inh_cleared | ws.cs.cleared
            layers = {**ws.inh_layers, **ws.cs.layers}
        ws.packs.ensure_stored(pending)
        scratch = self._scratch_key(inherited, version)
        return ForkState(
            ws.assets, ws.base, self._branch, ws.session_id, meta, scratch, None, cleared, layers
        )

    def __reduce__(self) -> tuple[Any, ...]:
        ws = self._workspace
        if ws.read_only:
            return (_rebuild_readonly, (ws.assets, ws.base, self._branch, ws.session_id))
        if not self.pickling_allowed:
            if pickled_by_distributed():
                # distributed wraps errors raised while it pickles a graph into its own
                # "could not serialize" error; travel as a stand-in that refuses every use
                # instead, so the task fails with this message before anything is written
                return (_RefusedSession, (ws.session_id, ws.base))
            raise PicklingNotAllowedError(PICKLING_MESSAGE)
        return (_rebuild_fork, (self._fork_state(),))

    # -- commit ---------------------------------------------------------------

    def commit(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        allow_empty: bool = False,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
    ) -> str:
        """Commit every change of this session atomically to its branch.

        If the branch moved since the session started, the changes are
        rebased onto the new tip as ``rebase_with`` decides (by default, when
        they do not collide). A commit that another commit beat to the branch
        waits its turn in the branch's commit queue, so concurrent commits
        land in the order they lost (docs/format.md). After a commit the
        session is read-only at the new snapshot.

        Parameters
        ----------
        message : str
            Commit message.
        metadata : dict of str to Any or None, optional
            JSON-serialisable properties stored with the snapshot (default: none).
        allow_empty : bool, optional
            Commit even if nothing changed (a snapshot equal to its parent);
            default ``False``.
        rebase_with : ConflictSolver or None, optional
            How to rebase onto commits that landed first: ``ConflictDetector()``
            (the default: only disjoint changes) or ``BasicConflictSolver(...)``
            (also settles chunk collisions).
        rebase_tries : int, optional
            How many rebases to try when other commits land first (default
            1000; 0: never rebase).

        Returns
        -------
        str
            The new snapshot id.

        Raises
        ------
        NoChangesToCommitError
            If there is nothing to commit (and ``allow_empty`` is false).
        RebaseFailedError
            If commits that landed meanwhile changed the same keys (named in the
            error) and ``rebase_with`` does not settle them, or the branch was
            reset to a history without this session's base.
        ConflictError
            If the branch kept moving: ``rebase_tries`` rebases were not enough
            (or ``rebase_tries=0`` and it moved); kind ``commit-conflict``.
        UnmergedWritesError
            If pickled copies or forks of this session wrote data that was never
            merged back, or a lazy write (``compute=False``) built from it never
            delivered its result.
        SessionStateError
            If this is a fork (merge it into its parent instead), or the session
            was already committed.
        ReadOnlyError
            If the session is read-only.
        NotFoundError
            If the branch was deleted since the session started.
        InvalidInputError
            If a metadata document is not valid Zarr v3, ``metadata`` is not a
            JSON-serialisable dict, ``message`` is not a str, ``rebase_tries`` is
            not an int >= 0 or ``rebase_with`` is not a conflict solver.

        Notes
        -----
        When an error is raised nothing was committed, with one exception: a
        :class:`~icechunk_dask.StorageError` while the branch's new entry is
        written (a lost acknowledgement that could not be checked by reading
        back) leaves the outcome unknown; look up the branch's tip.
        """
        ws = self._workspace
        if ws.committed:
            raise SessionStateError(
                f"this session was already committed (as snapshot {ws.base}); a session "
                "commits once. Open a new one with repo.writable_session(branch) to commit more"
            )
        ws.check_writable()
        if self.is_fork:
            raise SessionStateError(
                "a fork cannot commit: merge it into the session it was forked from "
                "(session.merge(fork) or merge_sessions(session, fork)) and commit that one"
            )
        if not isinstance(message, str):
            raise InvalidInputError(f"the commit message must be a str, got {message!r}")
        tries: object = rebase_tries  # checked at run time: callers may pass anything
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 0:
            raise InvalidInputError(
                f"rebase_tries must be an int >= 0 (0: never rebase), got {rebase_tries!r}"
            )
        try:
            meta_json = json.loads(json.dumps(metadata or {}))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"commit metadata must be JSON-serialisable: {e}") from e
        if not isinstance(meta_json, dict):
            raise InvalidInputError("commit metadata must be a dict")
        solver = rebase_with if rebase_with is not None else ConflictDetector()
        if isinstance(solver, type):
            raise InvalidInputError(
                f"rebase_with takes a solver instance, got the class {solver.__name__}; pass "
                f"{solver.__name__}() (with its options)"
            )
        if not isinstance(solver, ConflictSolver):
            raise InvalidInputError(
                "rebase_with must be a conflict solver such as ConflictDetector() or "
                f"BasicConflictSolver(...), got {rebase_with!r}"
            )
        self._collect_jobs()
        cs = ws.freeze()  # no copy: writes are refused until the commit ends
        try:
            new_id_ = self._publish(cs, message, meta_json, allow_empty, rebase_tries, solver)
        finally:
            ws.frozen = False
        with ws.lock:
            ws.base = new_id_
            ws.read_only = True
            ws.committed = True
            ws.cs = ChangeSet(ws.assets.repo_id, new_id_)
        if cs.jobs:
            with contextlib.suppress(Exception):  # leftovers are swept by garbage_collect
                run(delete_jobs(ws.assets, cs.jobs))
        return new_id_

    def _publish(
        self,
        cs: ChangeSet,
        message: str,
        metadata: dict[str, Any],
        allow_empty: bool,
        rebase_tries: int,
        solver: ConflictSolver,
    ) -> str:
        """Check ``cs`` and run the commit protocol; return the new snapshot id."""
        ws = self._workspace
        forks = self._family.unmerged(cs.writers)
        if forks:
            raise UnmergedWritesError(f"{len(forks)} fork(s) {UNMERGED_FORK_MESSAGE}")
        if not cs and not allow_empty:
            if run(unmerged_writers(ws.assets, ws.session_id, cs)):
                raise UnmergedWritesError(f"some {UNMERGED_MESSAGE}")
            raise NoChangesToCommitError(
                "there are no changes to commit; write data through session.store first "
                "(or pass allow_empty=True to record a commit anyway)"
            )
        for key, doc in cs.meta.items():
            if doc is not None:
                validate_metadata(key, doc)
        assert self._branch is not None
        return run(
            commit_changes(
                ws.assets,
                self._branch,
                ws.session_id,
                ws.base,
                cs,
                message,
                metadata,
                rebase_tries,
                solver,
                self._maybe_landed,
            )
        )


class ForkSession(Session):
    """A fork of a writable session: picklable, writable, merged back instead of committed.

    Made by :meth:`Session.fork` (and by unpickling a session sent inside
    :meth:`Session.allow_pickling`); do not construct one directly (the
    parameters below are internal). Bring its changes back with
    ``session.merge(fork)`` (or :func:`~icechunk_dask.merge_sessions`).

    Parameters
    ----------
    assets : icechunk_dask._assets.AssetManager
        The repository's objects.
    snapshot_id : str
        The snapshot the session starts from.
    branch : str or None
        The branch it commits to (``None`` for snapshot views).
    read_only : bool
        Whether writes are refused.
    session_id : str or None, optional
        The id shared with the session's forks and copies (default: a new one).
    tracked : bool, optional
        Whether the session is a worker-side copy that marks its first write,
        so that ``commit`` can tell whether its changes came back (default
        ``False``).
    """

    @property
    def is_fork(self) -> bool:
        """Always ``True``."""
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        ws = self._workspace
        with ws.lock:
            pending = ws.packs.close_locked()
            # a fork travels with its own changes; what it inherited stays inherited
            own = ws.cs.to_bytes()
            inherited = ws.inh_chunks or {}
            scratch = ws.inh_scratch
        ws.packs.ensure_stored(pending)
        if scratch is None and inherited:
            scratch = self._scratch_key(inherited, -1)
        state = ForkState(
            ws.assets,
            ws.base,
            self._branch,
            ws.session_id,
            ws.inh_meta,
            scratch,
            own,
            ws.inh_cleared,
            ws.inh_layers,
        )
        return (_rebuild_fork, (state,))


class _RefusedSession:
    """What a writable session becomes when distributed pickles it without ``allow_pickling``.

    It names its session (stores compare equal by it) and raises
    :class:`PicklingNotAllowedError` with the fixes on any other use, in the
    task that tried to use it; the client sees that error.
    """

    def __init__(self, session_id: str, snapshot_id: str) -> None:
        self.session_id = session_id
        self.snapshot_id = snapshot_id
        self.read_only = False
        self.is_fork = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RefusedSession, (self.session_id, self.snapshot_id))

    def __getattr__(self, name: str) -> Any:
        raise PicklingNotAllowedError(PICKLING_MESSAGE)


def _rebuild_readonly(
    assets: AssetManager, snapshot_id: str, branch: str | None, session_id: str
) -> Session:
    return Session(assets, snapshot_id, branch=branch, read_only=True, session_id=session_id)


def _rebuild_fork(state: ForkState) -> ForkSession:
    state.assets.storage.check_usable()
    # every unpickled copy is tracked: only in-process forks are not
    s = ForkSession(
        state.assets,
        state.base,
        branch=state.branch,
        read_only=False,
        session_id=state.session_id,
        tracked=True,
    )
    ws = s._workspace
    ws.inh_meta = state.meta
    ws.inh_cleared = state.cleared
    ws.inh_layers = state.layers
    if state.scratch is not None:
        ws.inh_chunks = None
        ws.inh_scratch = state.scratch
    if state.own is not None:
        ws.cs = ChangeSet.from_bytes(state.own)
    return s
