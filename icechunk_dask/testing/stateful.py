"""Hypothesis state machines that check icechunk_dask against simpler oracles.

* :class:`SerialParallelStateMachine` applies the same random array
  creations, chunk writes and deletions once directly to branch ``main`` and
  once through forks (pickled, forked or shared, merged in any order) to
  branch ``parallel``; both branches must always hold identical bytes.
* :class:`VersionControlStateMachine` runs commits, branches, tags, resets,
  deletions, read-only sessions at old snapshots, discards and reopens against
  a pure-Python :class:`~icechunk_dask.testing.models.RepositoryModel`.
* :class:`CommittingZarrHierarchyStateMachine` is zarr's own
  ``ZarrHierarchyStateMachine`` on a session's store, plus rules that commit
  (or reopen the repository) and check that listing and reads are identical
  before and after.

Run one with ``run_state_machine_as_test(Machine)`` or expose
``TestMachine = Machine.TestCase``. Each machine creates its repository on the
backend named by the class attribute ``backend`` (``"memory"`` or
``"local"``); subclass the first two and override
:meth:`RepositoryMachine.make_storage` to test another storage (an S3 bucket, a
:class:`~icechunk_dask.storage.FaultyStorage` adding latency, ...).
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from typing import Any, ClassVar

import hypothesis.strategies as st
import numpy as np
import zarr
from hypothesis import assume, note
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.stateful import ZarrHierarchyStateMachine

from icechunk_dask import (
    IcechunkDaskError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    ReadOnlyError,
    Repository,
    Session,
    SessionStateError,
    UnmergedWritesError,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask.distributed import merge_sessions
from icechunk_dask.format import new_id
from icechunk_dask.storage import LocalFileSystemStorage, Storage
from icechunk_dask.testing.models import RepositoryModel
from icechunk_dask.testing.strategies import (
    array_names,
    arrays_and_chunks,
    attributes,
    chunk_key_of,
    chunk_payloads,
    chunk_regions,
    commit_messages,
    group_document,
    invalid_ref_names,
    ref_names,
)

__all__ = [
    "CommittingZarrHierarchyStateMachine",
    "RepositoryMachine",
    "SerialParallelStateMachine",
    "VersionControlStateMachine",
    "read_store",
]


def read_store(store: Store) -> dict[str, bytes]:
    """Every key a store lists, with its bytes.

    Parameters
    ----------
    store : zarr.abc.store.Store
        Any zarr store.

    Returns
    -------
    dict of str to bytes
        The store's contents.
    """

    async def go() -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        proto = default_buffer_prototype()
        async for key in store.list_prefix(""):
            buf = await store.get(key, proto)
            assert buf is not None, f"{key!r} is listed but cannot be read"
            out[key] = buf.to_bytes()
        return out

    return sync(go())


def _expect(error: type[BaseException] | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``: it must raise ``error`` (typed, with a message), or succeed if ``None``."""
    if error is None:
        return fn(*args, **kwargs)
    try:
        fn(*args, **kwargs)
    except error as e:
        if not isinstance(e, IcechunkDaskError) or not str(e):
            raise AssertionError(f"untyped or silent error: {type(e).__name__}: {e}") from e
        note(f"raised as expected: {type(e).__name__}: {e}")
        return None
    raise AssertionError(f"{fn.__name__} should have raised {error.__name__}")


class RepositoryMachine(RuleBasedStateMachine):
    """Base of the machines: makes (and cleans up) the storage of one example.

    Attributes
    ----------
    backend : str
        A class attribute: ``"memory"`` (default) or ``"local"`` (a temporary
        directory).
    storage : Storage
        The example's storage, made by :meth:`make_storage`.
    """

    backend: ClassVar[str] = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._tmpdir: str | None = None
        self.storage = self.make_storage()

    def make_storage(self) -> Storage:
        """Return a new, empty storage for one example.

        Returns
        -------
        Storage
            In memory, or in a temporary directory removed at teardown.

        Raises
        ------
        ValueError
            If ``backend`` is neither ``"memory"`` nor ``"local"``.
        """
        if self.backend == "memory":
            return in_memory_storage()
        if self.backend == "local":
            self._tmpdir = tempfile.mkdtemp(prefix="icechunk-dask-stateful-")
            return local_filesystem_storage(self._tmpdir)
        raise ValueError(f"unknown backend {self.backend!r}; use 'memory' or 'local'")

    def reopen_storage(self) -> Storage:
        """Return a new handle on the same storage (as another process would open it).

        Returns
        -------
        Storage
            A new local-filesystem storage on the same directory, or the
            in-memory storage itself (it cannot be reopened).
        """
        if isinstance(self.storage, LocalFileSystemStorage):
            return local_filesystem_storage(self.storage.root)
        return self.storage

    def teardown(self) -> None:
        """Remove the example's temporary directory."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


# -- serial vs parallel -------------------------------------------------------------------------

_FORK_MODES = ("pickle", "fork", "fork-pickled", "threads")
_MERGE_ORDERS = ("1-2-p", "2-1-p", "p-12", "records", "merge_sessions", "abandon")


class SerialParallelStateMachine(RepositoryMachine):
    """The same writes, serially on ``main`` and through forks on ``parallel``.

    While forks exist, each chunk is written by one session only (the first
    that touched it since the forks were made), because two sessions writing
    one chunk is a merge conflict by design, not a serial history.
    """

    def __init__(self) -> None:
        super().__init__()
        self.repo = Repository.create(self.storage)
        self.repo.create_branch("parallel", self.repo.lookup_branch("main"))
        self.serial = self.repo.writable_session("main")
        self.parallel = self.repo.writable_session("parallel")
        self.forks: list[Session] = []
        self.mode = ""
        self.owner: dict[str, int] = {}
        self.copies_wrote_chunks = False
        self.arrays: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.committed_arrays: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _sessions(self) -> list[Session]:
        return [self.parallel, *self.forks]

    def _target(self, data: st.DataObject, key: str) -> Session:
        sessions = self._sessions()
        if len(sessions) == 1:
            return self.parallel
        pick = data.draw(st.integers(0, len(sessions) - 1), label="session (0 = parallel)")
        index = self.owner.setdefault(key, pick)
        note(f"on {'parallel' if index == 0 else f'fork{index}'}")
        return sessions[index]

    @precondition(lambda self: not self.forks)
    @rule(
        data=st.data(),
        name=array_names,
        array_and_chunks=arrays_and_chunks(),
        compress=st.booleans(),
    )
    def add_array(
        self,
        data: st.DataObject,
        name: str,
        array_and_chunks: tuple[np.ndarray[Any, Any], tuple[int, ...]],
        compress: bool,
    ) -> None:
        """Create an array (with data) on both branches.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        name : str
            The array's name (a new one).
        array_and_chunks : tuple of (numpy.ndarray, tuple of int)
            Its data and chunk shape.
        compress : bool
            Whether zarr compresses its chunks.
        """
        assume(name not in self.arrays)
        array, chunks = array_and_chunks
        fill = data.draw(st.sampled_from([0, 1]), label="fill value")
        note(f"add array {name!r} shape={array.shape} chunks={chunks} dtype={array.dtype}")
        for session in (self.serial, self.parallel):
            zarr.create_array(
                session.store,
                name=name,
                data=array,
                chunks=chunks,
                fill_value=fill,
                compressors="auto" if compress else None,
            )
        self.arrays[name] = (array.shape, chunks)

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data(), write_empty=st.booleans())
    def write_region(self, data: st.DataObject, write_empty: bool) -> None:
        """Write a region inside one chunk, serially and on one parallel session.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        write_empty : bool
            zarr's ``write_empty_chunks`` for this write.
        """
        name = data.draw(st.sampled_from(sorted(self.arrays)), label="array")
        shape, chunks = self.arrays[name]
        region = data.draw(chunk_regions(shape=shape, chunks=chunks), label="region")
        size = tuple(s.stop - s.start for s in region)
        values = data.draw(
            st.sampled_from([0, 1, 7]).map(lambda v: np.full(size, v))
            | st.just(np.arange(int(np.prod(size))).reshape(size)),
            label="values",
        )
        target = self._target(data, chunk_key_of(name, region, chunks))
        tracked_copy = target is not self.parallel and self.mode == "pickle"
        # a pickled copy leaves its "I wrote data" marker only when zarr really writes the
        # chunk, so make zarr write chunks that hold only the fill value too
        write_empty = write_empty or tracked_copy
        note(f"write {name}[{region}] (write_empty_chunks={write_empty})")
        with zarr.config.set({"array.write_empty_chunks": write_empty}):
            for session in (self.serial, target):
                array = zarr.open_array(session.store, path=name)
                array[region] = values.astype(array.dtype)
        self.copies_wrote_chunks |= tracked_copy

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data())
    def delete_chunk(self, data: st.DataObject) -> None:
        """Delete one chunk (present or not), serially and on one parallel session.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        """
        name = data.draw(st.sampled_from(sorted(self.arrays)), label="array")
        shape, chunks = self.arrays[name]
        region = data.draw(chunk_regions(shape=shape, chunks=chunks), label="chunk")
        key = chunk_key_of(name, region, chunks)
        note(f"delete {key!r}")
        sync(self.serial.store.delete(key))
        sync(self._target(data, key).store.delete(key))

    @precondition(lambda self: not self.forks)
    @rule(mode=st.sampled_from(_FORK_MODES))
    def make_forks(self, mode: str) -> None:
        """Make two forks of ``parallel``: pickled copies, forks, pickled forks or itself.

        Parameters
        ----------
        mode : str
            ``"pickle"``, ``"fork"``, ``"fork-pickled"`` or ``"threads"`` (the
            session itself, shared).
        """
        note(f"fork ({mode})")
        p = self.parallel
        if mode == "pickle":
            with p.allow_pickling():
                self.forks = [pickle.loads(pickle.dumps(p)) for _ in range(2)]
        elif mode == "fork":
            self.forks = [p.fork(), p.fork()]
        elif mode == "fork-pickled":
            self.forks = [pickle.loads(pickle.dumps(p.fork())) for _ in range(2)]
        else:
            self.forks = [p, p]
        self.mode = mode
        self.owner = {}
        self.copies_wrote_chunks = False

    @precondition(lambda self: bool(self.forks) and self.mode != "threads")
    @rule(which=st.sampled_from([0, 1]))
    def repickle_fork(self, which: int) -> None:
        """Send a fork that holds changes through pickle again.

        Parameters
        ----------
        which : int
            The fork (0 or 1).
        """
        note(f"repickle fork{which + 1}")
        self.forks[which] = pickle.loads(pickle.dumps(self.forks[which]))

    @precondition(lambda self: bool(self.forks))
    @rule(order=st.sampled_from(_MERGE_ORDERS))
    def merge(self, order: str) -> None:
        """Merge both forks back in one of several orders (or abandon them); compare.

        Parameters
        ----------
        order : str
            How: ``"1-2-p"``, ``"2-1-p"`` (chained merges), ``"p-12"`` (both at
            once), ``"records"`` (pickled change records), ``"merge_sessions"``
            or ``"abandon"``.
        """
        f1, f2 = self.forks
        note(f"merge ({order})")
        if order == "1-2-p":
            f2.merge(f1)
            self.parallel.merge(f2)
        elif order == "2-1-p":
            f1.merge(f2)
            self.parallel.merge(f1)
        elif order == "p-12":
            self.parallel.merge(f1, f2)
        elif order == "records":
            records = [pickle.loads(pickle.dumps(f.changes())) for f in (f2, f1)]
            self.parallel.merge(*records)
        elif order == "merge_sessions":
            merge_sessions(self.parallel, [f2, f1])
        else:
            self._abandon_forks()
        self.forks = []
        self.check_same_contents()

    def _abandon_forks(self) -> None:
        # Forks dropped unmerged: commit must not silently lose the chunks that pickled
        # copies wrote (whether or not the coordinator has changes of its own). Then both
        # branches start over from their tips.
        if self.copies_wrote_chunks:
            _expect(UnmergedWritesError, self.parallel.commit, "must not commit")
        self.serial = self.repo.writable_session("main")
        self.parallel = self.repo.writable_session("parallel")
        self.arrays = dict(self.committed_arrays)

    @precondition(lambda self: not self.forks)
    @rule(message=commit_messages)
    def commit(self, message: str) -> None:
        """Commit both branches (or check that both have nothing to commit).

        Parameters
        ----------
        message : str
            The commit message.
        """
        changed = self.serial.has_uncommitted_changes
        assert self.parallel.has_uncommitted_changes == changed
        if not changed:
            _expect(NoChangesToCommitError, self.serial.commit, message)
            _expect(NoChangesToCommitError, self.parallel.commit, message)
            return
        note("commit both")
        serial_id = self.serial.commit(message)
        parallel_id = self.parallel.commit(message)
        assert serial_id != parallel_id
        self.serial = self.repo.writable_session("main")
        self.parallel = self.repo.writable_session("parallel")
        self.committed_arrays = dict(self.arrays)
        main = self.repo.readonly_session(snapshot_id=serial_id)
        other = self.repo.readonly_session(snapshot_id=parallel_id)
        assert read_store(main.store) == read_store(other.store)

    @precondition(lambda self: not self.forks)
    @invariant()
    def check_same_contents(self) -> None:
        """Both branches' sessions list the same keys with the same bytes."""
        serial = read_store(self.serial.store)
        parallel = read_store(self.parallel.store)
        assert serial.keys() == parallel.keys(), sorted(serial.keys() ^ parallel.keys())
        different = sorted(k for k in serial if serial[k] != parallel[k])
        assert not different, different


# -- version control vs a model -----------------------------------------------------------------

_GROUPS = ("", "g", "g/h", "k")
_CHUNKS = 6


class VersionControlStateMachine(RepositoryMachine):
    """Commits, branches, tags and sessions, checked against :class:`RepositoryModel`.

    The store holds a few group documents and the chunks of one array
    (``arr``); their bytes are drawn at random (inlined or stored as objects).
    """

    commits: Bundle[str] = Bundle("commits")

    def __init__(self) -> None:
        super().__init__()
        self.repo = Repository.create(self.storage)
        root = self.repo.lookup_branch("main")
        (info,) = self.repo.ancestry(snapshot_id=root)
        self.model = RepositoryModel(root, info.message)
        self.session = self.repo.writable_session("main")
        self.work = self.model.checkout(branch="main")

    @initialize(target=commits)
    def root(self) -> str:
        """Put the repository's first snapshot in the ``commits`` bundle.

        Returns
        -------
        str
            Its id.
        """
        return self.model.root_id

    def _checkout(self, branch: str) -> None:
        self.session = self.repo.writable_session(branch)
        self.work = self.model.checkout(branch=branch)

    # -- writes -----------------------------------------------------------------

    @rule(data=st.data(), count=st.integers(1, 4))
    def write(self, data: st.DataObject, count: int) -> None:
        """Write group documents or raw chunk bytes, or delete keys (present or not).

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        count : int
            How many writes or deletions.
        """
        for _ in range(count):
            op = data.draw(st.sampled_from(["group", "chunk", "delete"]), label="operation")
            if op == "group":
                group = data.draw(st.sampled_from(_GROUPS), label="group")
                key = f"{group}/zarr.json" if group else "zarr.json"
                self._write(key, group_document(data.draw(attributes, label="attributes")))
            elif op == "chunk":
                index = data.draw(st.integers(0, _CHUNKS - 1), label="chunk")
                self._write(f"arr/c/{index}", data.draw(chunk_payloads, label="bytes"))
            else:
                keys = [*sorted(self.work.contents), "arr/c/99", "nothing/zarr.json"]
                key = data.draw(st.sampled_from(keys), label="key")
                note(f"delete {key!r}")
                sync(self.session.store.delete(key))
                self.work.delete(key)

    def _write(self, key: str, value: bytes) -> None:
        note(f"set {key!r} ({len(value)} bytes)")
        sync(self.session.store.set(key, default_buffer_prototype().buffer.from_bytes(value)))
        self.work.set(key, value)

    @rule()
    def discard(self) -> None:
        """Drop the session's uncommitted changes."""
        self.session.discard_changes()
        self.model.discard(self.work)

    # -- commits ----------------------------------------------------------------

    @rule(target=commits, message=commit_messages, data=st.data())
    def commit(self, message: str, data: st.DataObject) -> Any:
        """Commit (often after one more write); the model says whether it succeeds.

        Parameters
        ----------
        message : str
            The commit message.
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).

        Returns
        -------
        Any
            The new snapshot id (added to the ``commits`` bundle), or nothing
            (``multiple()``) when the commit must fail.
        """
        if data.draw(st.integers(0, 3), label="write first (unless 0)"):
            index = data.draw(st.integers(0, _CHUNKS - 1), label="chunk")
            self._write(f"arr/c/{index}", data.draw(chunk_payloads, label="bytes"))
        expected = self.model.commit_error(self.work)
        if expected is not None:
            _expect(expected, self.session.commit, message)
            if expected is not NoChangesToCommitError:
                # the session cannot commit any more: start a new one, as a user would
                branch = self.work.branch
                self._checkout(branch if branch in self.model.branches else "main")
            return multiple()
        snapshot_id = self.session.commit(message, {"n": len(self.model.commits)})
        note(f"committed {snapshot_id}")
        self.model.commit(self.work, snapshot_id, message)
        assert self.session.read_only
        _expect(SessionStateError, self.session.commit, "again")
        assert self.work.branch is not None
        self._checkout(self.work.branch)
        return snapshot_id

    def _name(self, data: st.DataObject, candidates: list[str | None]) -> str:
        # half the time a name in use (the session's own branch first), else any valid name
        names = [n for n in dict.fromkeys(candidates) if n is not None]
        use_existing: bool = data.draw(st.booleans(), label="existing name")
        if names and use_existing:
            return data.draw(st.sampled_from(names), label="name")
        return data.draw(ref_names, label="name")

    # -- branches and tags ------------------------------------------------------

    @rule(data=st.data(), snapshot_id=commits)
    def create_branch(self, data: st.DataObject, snapshot_id: str) -> None:
        """Create a branch at any commit.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        snapshot_id : str
            Where the branch starts.
        """
        name = self._name(data, [self.work.branch, *self.model.branches])
        if name == self.work.branch and name not in self.model.branches:
            # the session's branch was deleted; a new branch of that name is another
            # history, so leave the orphaned session first
            self._checkout("main")
        _expect(
            self.model.create_branch(name, snapshot_id), self.repo.create_branch, name, snapshot_id
        )

    @rule(data=st.data(), snapshot_id=commits)
    def reset_branch(self, data: st.DataObject, snapshot_id: str) -> None:
        """Point a branch at any commit (the session's own branch included).

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        snapshot_id : str
            Where the branch should point.
        """
        name = self._name(data, [self.work.branch, *self.model.branches])
        current = name == self.work.branch and name in self.model.branches
        _expect(
            self.model.reset_branch(name, snapshot_id), self.repo.reset_branch, name, snapshot_id
        )
        moved = current and snapshot_id != self.work.base
        if moved and self.model.is_ancestor(self.work.base, snapshot_id):
            # moved forward: whether a commit rebases depends on what changed, which the
            # model does not track; start over. (Moved to another history: committing
            # must fail, see RepositoryModel.commit_error.)
            self._checkout(name)

    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        """Delete a branch (main and unknown names are refused).

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        """
        name = self._name(data, [self.work.branch, *self.model.branches])
        _expect(self.model.delete_branch(name), self.repo.delete_branch, name)

    @rule(data=st.data(), snapshot_id=commits)
    def create_tag(self, data: st.DataObject, snapshot_id: str) -> None:
        """Tag a commit; tag names are never reused.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        snapshot_id : str
            The commit to tag.
        """
        name = self._name(data, [*self.model.tags, *sorted(self.model.deleted_tags)])
        _expect(self.model.create_tag(name, snapshot_id), self.repo.create_tag, name, snapshot_id)

    @rule(data=st.data())
    def delete_tag(self, data: st.DataObject) -> None:
        """Delete a tag.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        """
        name = self._name(data, [*self.model.tags, *sorted(self.model.deleted_tags)])
        _expect(self.model.delete_tag(name), self.repo.delete_tag, name)

    @rule(name=invalid_ref_names, snapshot_id=commits)
    def bad_names_and_ids(self, name: Any, snapshot_id: str) -> None:
        """Check that invalid names and unknown snapshot ids are refused and change nothing.

        Parameters
        ----------
        name : Any
            An invalid branch or tag name (of any type).
        snapshot_id : str
            An existing commit.
        """
        _expect(InvalidInputError, self.repo.create_branch, name, snapshot_id)
        _expect(InvalidInputError, self.repo.create_tag, name, snapshot_id)
        _expect(InvalidInputError, self.repo.writable_session, name)
        _expect(NotFoundError, self.repo.readonly_session, snapshot_id=new_id())

    # -- sessions ---------------------------------------------------------------

    @rule(data=st.data())
    def checkout_branch(self, data: st.DataObject) -> None:
        """Start a writable session on a branch (uncommitted changes are dropped).

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        """
        name = self._name(data, [*self.model.branches])
        if name not in self.model.branches:
            _expect(NotFoundError, self.repo.writable_session, name)
            return
        self._checkout(name)

    @rule(data=st.data(), snapshot_id=commits, key=st.sampled_from(["zarr.json", "arr/c/0"]))
    def readonly_view(self, data: st.DataObject, snapshot_id: str, key: str) -> None:
        """Check that a read-only session at a commit or tag shows it exactly and refuses writes.

        Parameters
        ----------
        data : hypothesis.strategies.DataObject
            Draws the rule's choices (Hypothesis passes it).
        snapshot_id : str
            The commit to view (unless a tag is drawn).
        key : str
            The key a write is attempted at.
        """
        tags = sorted(self.model.tags)
        by_tag: bool = data.draw(st.booleans(), label="by tag")
        if tags and by_tag:
            tag = data.draw(st.sampled_from(tags), label="tag")
            session = self.repo.readonly_session(tag=tag)
            snapshot_id = self.model.tags[tag]
        else:
            session = self.repo.readonly_session(snapshot_id=snapshot_id)
        assert session.snapshot_id == snapshot_id
        expected = dict(self.model.commits[snapshot_id].contents)
        assert read_store(session.store) == expected
        buf = default_buffer_prototype().buffer.from_bytes(b"x")
        _expect(ReadOnlyError, sync, session.store.set(key, buf))
        assert read_store(session.store) == expected

    @rule()
    def reopen(self) -> None:
        """Open the repository again (fresh caches), as another process would.

        The open session keeps working on the handle it was made from; refs,
        history and read-only views now go through the new handle.
        """
        self.repo = Repository.open(self.reopen_storage())

    # -- invariants -------------------------------------------------------------

    @invariant()
    def refs_agree(self) -> None:
        """Branches and tags (names and targets) match the model."""
        assert self.repo.list_branches() == set(self.model.branches)
        for name, snapshot_id in self.model.branches.items():
            assert self.repo.lookup_branch(name) == snapshot_id
        assert self.repo.list_tags() == set(self.model.tags)
        for name, snapshot_id in self.model.tags.items():
            assert self.repo.lookup_tag(name) == snapshot_id

    @invariant()
    def history_agrees(self) -> None:
        """Every branch's ancestry (ids and messages) matches the model."""
        for name, tip in self.model.branches.items():
            infos = list(self.repo.ancestry(branch=name))
            assert [i.id for i in infos] == self.model.ancestry(tip)
            assert [i.message for i in infos] == [self.model.commits[i.id].message for i in infos]

    @invariant()
    def working_copy_agrees(self) -> None:
        """The session shows its base plus its own changes, nothing else."""
        assert read_store(self.session.store) == self.work.contents
        assert self.session.has_uncommitted_changes == self.work.changed


# -- zarr's hierarchy machine, committing -------------------------------------------------------


class CommittingZarrHierarchyStateMachine(ZarrHierarchyStateMachine):
    """Zarr's ``ZarrHierarchyStateMachine`` on a session store, with commits and reopens.

    Every inherited rule runs unchanged against ``session.store`` (and zarr's
    ``MemoryStore`` as the model); the added rules commit or reopen and check
    that listing and reading every key give the same answer before and after.
    """

    backend: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self._tmpdir: str | None = None
        if self.backend == "memory":
            self.storage: Storage = in_memory_storage()
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="icechunk-dask-stateful-")
            self.storage = local_filesystem_storage(self._tmpdir)
        self.repo = Repository.create(self.storage)
        self.session = self.repo.writable_session("main")
        super().__init__(self.session.store)

    def _restart(self, repo: Repository) -> None:
        self.repo = repo
        self.session = repo.writable_session("main")
        self.store = self.session.store

    @precondition(lambda self: self.session.has_uncommitted_changes)
    @rule(message=commit_messages)
    def commit_with_check(self, message: str) -> None:
        """Commit; listing and reads must be identical before and after.

        Parameters
        ----------
        message : str
            The commit message.
        """
        before = read_store(self.store)
        snapshot_id = self.session.commit(message)
        note(f"committed {snapshot_id} ({len(before)} keys)")
        assert read_store(self.session.store) == before  # the committed session
        self._restart(self.repo)
        assert read_store(self.store) == before
        assert read_store(self.repo.readonly_session(snapshot_id=snapshot_id).store) == before

    @precondition(lambda self: not self.session.has_uncommitted_changes)
    @rule()
    def reopen_with_check(self) -> None:
        """Open the repository again, as another process would; nothing changes."""
        before = read_store(self.store)
        storage = self.storage
        if isinstance(storage, LocalFileSystemStorage):
            storage = local_filesystem_storage(storage.root)
        self._restart(Repository.open(storage))
        assert read_store(self.store) == before

    def teardown(self) -> None:
        """Remove the example's temporary directory."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
