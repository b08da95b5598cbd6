"""The misuse catalogue of ``docs/errors.md``: one test per entry (E01, E02, ...).

Every case checks three things: the error is of the documented type and
``kind``; its message says what happened and what to do; and the repository
is left as it was (compared file by file; uncommitted chunk objects, which no
snapshot references, are the only thing a failed write may leave behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import pickle
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icechunk_dask import (
    ConflictDetector,
    ConflictError,
    ErrorKind,
    FormatVersionError,
    IcechunkDaskError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    PicklingNotAllowedError,
    ReadOnlyError,
    RebaseFailedError,
    Repository,
    Session,
    SessionStateError,
    UnmergedWritesError,
    VersionSelection,
    in_memory_storage,
    local_filesystem_storage,
    storage_from_url,
)
from icechunk_dask.dask import store_sessions
from icechunk_dask.distributed import merge_sessions
from icechunk_dask.format import FORMAT_VERSION, RepoConfig

# -- helpers ----------------------------------------------------------------------------------

_INVISIBLE = ("chunks/", "scratch/", "sessions/")


def _fingerprint(root: Path, strict: bool) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_dir() or path.name.startswith(".tmp-"):
            continue
        if not strict and key.startswith(_INVISIBLE):
            continue
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def unchanged(root: Path, *, strict: bool = True) -> Iterator[None]:
    """The repository at ``root`` is the same afterwards (``strict``: byte for byte, every file)."""
    before = _fingerprint(root, strict)
    yield
    after = _fingerprint(root, strict)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def check(error: BaseException, kind: ErrorKind | None, *phrases: str) -> None:
    """Typed, with a stable kind, and saying what happened and what to do."""
    if kind is not None:
        assert isinstance(error, IcechunkDaskError)
        assert error.kind == kind, error.kind
    text = str(error)
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


def _set(session: Session, key: str, value: bytes) -> None:
    sync(session.store.set(key, default_buffer_prototype().buffer.from_bytes(value)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repo(root: Path) -> Repository:
    repo = Repository.create(local_filesystem_storage(root))
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store, name="a", shape=(8,), chunks=(4,), dtype="int64", compressors=None
    )
    array[:] = np.arange(8) + 100
    session.commit("setup")
    return repo


def _array(session: Session) -> Any:
    return zarr.open_array(session.store, path="a")


# -- pickling and merging ---------------------------------------------------------------------


def test_e01_pickling_a_writable_session_without_opt_in(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    with unchanged(root), pytest.raises(PicklingNotAllowedError) as info:
        pickle.dumps(session)
    check(
        info.value, ErrorKind.PICKLING_NOT_ALLOWED, "cannot be pickled", "allow_pickling", "fork()"
    )
    assert isinstance(info.value, TypeError)


def test_e02_pickling_a_writable_store_without_opt_in(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    with unchanged(root), pytest.raises(PicklingNotAllowedError) as info:
        pickle.dumps(session.store)
    check(info.value, ErrorKind.PICKLING_NOT_ALLOWED, "allow_pickling")


def test_e03_merging_a_session_of_another_repository(repo: Repository, root: Path) -> None:
    other = Repository.create(in_memory_storage()).writable_session("main")
    session = repo.writable_session("main")
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        session.merge(other.fork())
    check(info.value, ErrorKind.FOREIGN_SESSION, "another repository", "forked from")
    assert not session.has_uncommitted_changes


def test_e04_merging_a_stale_fork(repo: Repository, root: Path) -> None:
    old = repo.writable_session("main")
    stale = old.fork()
    _array(stale)[:4] = 1
    newer = repo.writable_session("main")
    _array(newer)[4:] = 2
    newer.commit("moves main")
    current = repo.writable_session("main")
    with unchanged(root, strict=False), pytest.raises(InvalidInputError) as info:
        current.merge(stale)
    check(info.value, ErrorKind.STALE_SESSION, "different version of the data", "fork")
    assert not current.has_uncommitted_changes


def test_e05_merging_something_that_is_not_a_session(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    with unchanged(root):
        with pytest.raises(TypeError) as info:
            session.merge({"a/c/0": b"x"})  # type: ignore[arg-type]
        check(info.value, None, "merge accepts Session and ChangeSet", "dict")
        with pytest.raises(TypeError) as info:
            merge_sessions(session, "not a session")  # type: ignore[arg-type]
        check(info.value, None, "merge_sessions accepts", "str")


def test_e06_two_forks_write_one_chunk_differently(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    f1, f2 = session.fork(), session.fork()
    _array(f1)[:4] = 1
    _array(f2)[:4] = 2
    with unchanged(root, strict=False), pytest.raises(ConflictError) as info:
        session.merge(f1, f2)
    check(info.value, ErrorKind.MERGE_CONFLICT, "'a/c/0'", "disjoint region")
    assert [k for c in info.value.conflicts for k in c.keys] == ["a/c/0"]
    assert not session.has_uncommitted_changes  # all or nothing


def test_e07_forks_write_unaligned_regions_of_one_chunk(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    f1, f2 = session.fork(), session.fork()
    _array(f1)[0:2] = 1  # both halves of chunk a/c/0: each fork stores its own version
    _array(f2)[2:4] = 2
    with unchanged(root, strict=False), pytest.raises(ConflictError) as info:
        merge_sessions(session, f1, f2)
    check(info.value, ErrorKind.MERGE_CONFLICT, "'a/c/0'", "aligned to whole chunks")
    assert not session.has_uncommitted_changes


def test_e08_dask_blocks_not_aligned_to_chunks(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    source = da.arange(8, chunks=3, dtype="int64")  # blocks meet inside chunk [0, 4)
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        store_sessions(source, _array(session), session)
    check(info.value, ErrorKind.UNALIGNED_WRITE, "inside the Zarr chunk", "rechunk")
    assert not session.has_uncommitted_changes


# -- unknown references -----------------------------------------------------------------------


def test_e09_unknown_branch(repo: Repository, root: Path) -> None:
    with unchanged(root):
        for call in (
            lambda: repo.writable_session("nope"),
            lambda: repo.readonly_session("nope"),
            lambda: repo.lookup_branch("nope"),
            lambda: list(repo.ancestry(branch="nope")),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            check(info.value, ErrorKind.NOT_FOUND, "'nope' does not exist", "['main']")
            assert isinstance(info.value, KeyError)


def test_e10_unknown_tag(repo: Repository, root: Path) -> None:
    with unchanged(root), pytest.raises(NotFoundError) as info:
        repo.readonly_session(tag="v9")
    check(info.value, ErrorKind.NOT_FOUND, "tag 'v9' does not exist")


def test_e11_unknown_snapshot(repo: Repository, root: Path) -> None:
    unknown = "0" * 20
    with unchanged(root):
        for call in (
            lambda: repo.readonly_session(snapshot_id=unknown),
            lambda: repo.create_branch("b", unknown),
            lambda: repo.create_tag("t", unknown),
            lambda: repo.reset_branch("main", unknown),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            check(info.value, ErrorKind.NOT_FOUND, f"snapshot {unknown} does not exist")


@pytest.mark.parametrize("bad", ["HEAD~1", "snapshot id and a newline"])
def test_e12_malformed_snapshot_id(repo: Repository, root: Path, bad: str) -> None:
    if bad != "HEAD~1":
        bad = repo.lookup_branch("main") + "\n"
    with unchanged(root), pytest.raises(NotFoundError) as info:
        repo.readonly_session(snapshot_id=bad)
    check(info.value, ErrorKind.NOT_FOUND, "is not a snapshot id", "repo.ancestry")


def test_e13_ambiguous_or_missing_reference(repo: Repository, root: Path) -> None:
    with unchanged(root):
        with pytest.raises(InvalidInputError) as info:
            repo.readonly_session("main", tag="v1")
        check(info.value, ErrorKind.INVALID_INPUT, "exactly one of branch=, tag= or snapshot_id=")
        with pytest.raises(InvalidInputError):
            repo.readonly_session()


# -- read-only sessions and session state -----------------------------------------------------


def test_e14_writing_through_a_read_only_session(repo: Repository, root: Path) -> None:
    session = repo.readonly_session("main")
    array = zarr.open_array(session.store, path="a", mode="r")
    with unchanged(root), pytest.raises(ReadOnlyError) as info:
        array[:4] = 0
    check(info.value, ErrorKind.READ_ONLY, "read-only mode", "repo.writable_session(branch)")
    assert isinstance(info.value, ValueError)


def test_e15_writing_through_a_read_only_view_of_a_writable_session(
    repo: Repository, root: Path
) -> None:
    session = repo.writable_session("main")
    view = session.store.with_read_only(True)
    with unchanged(root), pytest.raises(ReadOnlyError) as info:
        sync(view.set("a/c/0", default_buffer_prototype().buffer.from_bytes(b"x")))
    check(info.value, ErrorKind.READ_ONLY, "read-only view of the session")
    assert not session.has_uncommitted_changes


def test_e16_committing_twice(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    session.commit("once")
    with unchanged(root), pytest.raises(SessionStateError) as info:
        session.commit("twice")
    check(info.value, ErrorKind.SESSION_STATE, "already committed", "repo.writable_session(branch)")


def test_e17_writing_after_commit(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    session.commit("once")
    with unchanged(root), pytest.raises(ReadOnlyError) as info:
        zarr.open_array(session.store, path="a", mode="r")[4:] = 0
    check(info.value, ErrorKind.READ_ONLY, "it was committed")


def test_e18_committing_a_fork(repo: Repository, root: Path) -> None:
    fork = repo.writable_session("main").fork()
    _array(fork)[:4] = 0
    with unchanged(root, strict=False), pytest.raises(SessionStateError) as info:
        fork.commit("from a fork")
    check(info.value, ErrorKind.SESSION_STATE, "a fork cannot commit", "merge_sessions")


def test_e19_committing_nothing(repo: Repository, root: Path) -> None:
    with unchanged(root), pytest.raises(NoChangesToCommitError) as info:
        repo.writable_session("main").commit("empty")
    check(info.value, ErrorKind.NO_CHANGES_TO_COMMIT, "no changes to commit", "session.store")


def test_e20_committing_with_unmerged_pickled_copies(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))
    _array(copy)[:4] = 1  # written by a "worker", never returned
    _array(session)[4:] = 2
    with unchanged(root, strict=False), pytest.raises(UnmergedWritesError) as info:
        session.commit("would lose the copy's writes")
    check(info.value, ErrorKind.UNMERGED_WRITES, "never merged back", "merge_sessions")
    session.merge(copy)
    session.commit("with the copy's writes")  # the fix works


@pytest.mark.parametrize("change", ["fill-value chunk", "chunk deletion", "attributes"])
def test_e20b_unmerged_copies_whose_changes_are_not_chunk_writes(
    repo: Repository, root: Path, change: str
) -> None:
    # Writing only the fill value makes zarr *delete* the chunk; deletions and metadata
    # changes made by a worker-side copy are lost just as silently as chunk writes.
    session = repo.writable_session("main")
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))
    if change == "fill-value chunk":
        _array(copy)[:4] = 0
    elif change == "chunk deletion":
        sync(copy.store.delete("a/c/1"))
    else:
        _array(copy).attrs["units"] = "m"
    _array(session)[4:] = 2
    with unchanged(root, strict=False), pytest.raises(UnmergedWritesError) as info:
        session.commit("would lose the copy's changes")
    check(info.value, ErrorKind.UNMERGED_WRITES, "never merged back")


def test_e21_forking_a_read_only_session(repo: Repository, root: Path) -> None:
    with unchanged(root), pytest.raises(SessionStateError) as info:
        repo.readonly_session("main").fork()
    check(info.value, ErrorKind.SESSION_STATE, "cannot fork a read-only", "writable_session")


def test_e22_merging_into_or_discarding_a_read_only_session(repo: Repository, root: Path) -> None:
    fork = repo.writable_session("main").fork()
    readonly = repo.readonly_session("main")
    with unchanged(root):
        with pytest.raises(ReadOnlyError) as info:
            readonly.merge(fork)
        check(info.value, ErrorKind.READ_ONLY, "read-only session")
        with pytest.raises(ReadOnlyError):
            readonly.discard_changes()


# -- names and references ---------------------------------------------------------------------

BAD_NAMES = [
    "",
    "a/b",
    "..",
    "a..b",
    ".hidden",
    "-x",
    "end.",
    "x" * 256,
    "sp ace",
    "naïve",
    "main\n",  # a trailing newline is no letter
    None,
    3,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_e23_invalid_branch_and_tag_names(repo: Repository, root: Path, name: Any) -> None:
    tip = repo.lookup_branch("main")
    with unchanged(root):
        for call in (
            lambda: repo.create_branch(name, tip),
            lambda: repo.create_tag(name, tip),
            lambda: repo.writable_session(name),
        ):
            with pytest.raises(InvalidInputError) as info:
                call()
            check(info.value, ErrorKind.INVALID_INPUT, "name", "letters, digits")


def test_e24_tag_name_that_looks_like_a_deleted_tag(repo: Repository, root: Path) -> None:
    # "v1.deleted" must not shadow (delete) tag "v1", nor be created and then be invisible
    tip = repo.lookup_branch("main")
    repo.create_tag("v1", tip)
    try:
        repo.create_tag("v1.deleted", tip)
    except InvalidInputError as e:
        check(e, ErrorKind.INVALID_INPUT, "v1.deleted")
    else:
        assert "v1.deleted" in repo.list_tags()
    assert repo.lookup_tag("v1") == tip
    assert "v1" in repo.list_tags()


def test_e25_existing_branch_and_tag_names(repo: Repository, root: Path) -> None:
    tip = repo.lookup_branch("main")
    repo.create_tag("v1", tip)
    repo.create_tag("old", tip)
    repo.delete_tag("old")
    with unchanged(root):
        with pytest.raises(InvalidInputError) as info:
            repo.create_branch("main", tip)
        check(info.value, ErrorKind.INVALID_INPUT, "already exists", "reset_branch")
        with pytest.raises(InvalidInputError) as info:
            repo.create_tag("v1", tip)
        check(info.value, ErrorKind.INVALID_INPUT, "already exists", "immutable")
        with pytest.raises(InvalidInputError) as info:
            repo.create_tag("old", tip)
        check(info.value, ErrorKind.INVALID_INPUT, "was deleted", "cannot be reused")


def test_e26_deleting_main_or_unknown_refs(repo: Repository, root: Path) -> None:
    with unchanged(root):
        with pytest.raises(InvalidInputError) as info:
            repo.delete_branch("main")
        check(info.value, ErrorKind.INVALID_INPUT, "'main' branch cannot be deleted")
        with pytest.raises(NotFoundError):
            repo.delete_branch("nope")
        with pytest.raises(NotFoundError):
            repo.reset_branch("nope", repo.lookup_branch("main"))
        with pytest.raises(NotFoundError):
            repo.delete_tag("nope")


# -- metadata and keys ------------------------------------------------------------------------

_ARRAY = {
    "zarr_format": 3,
    "node_type": "array",
    "shape": [8],
    "data_type": "int64",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    "fill_value": 0,
    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
}
_NOT_V3 = {
    "not JSON": (b"{nope", "not valid JSON"),
    "zarr_format 2": (json.dumps({**_ARRAY, "zarr_format": 2}).encode(), "not Zarr v3"),
    "a list": (b"[1, 2]", "not Zarr v3"),
    "unknown node_type": (json.dumps({**_ARRAY, "node_type": "tree"}).encode(), "node_type"),
    "no data_type": (
        json.dumps({k: v for k, v in _ARRAY.items() if k != "data_type"}).encode(),
        "not valid Zarr v3 array metadata",
    ),
    "negative shape": (json.dumps({**_ARRAY, "shape": [-8]}).encode(), "non-negative"),
}


@pytest.mark.parametrize("case", list(_NOT_V3))
def test_e27_zarr_metadata_that_is_not_valid_v3(repo: Repository, root: Path, case: str) -> None:
    doc, phrase = _NOT_V3[case]
    session = repo.writable_session("main")
    _set(session, "b/zarr.json", doc)
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        session.commit("bad metadata")
    check(info.value, ErrorKind.INVALID_INPUT, "'b/zarr.json'", phrase, "othing was committed")
    sync(session.store.delete("b/zarr.json"))  # the session stays usable: fix and commit
    _array(session)[:4] = 0
    session.commit("fixed")


@pytest.mark.parametrize(
    "chunk_shape", [[0], [-4], [4, 4], [1.5]], ids=["zero", "negative", "too-many-dims", "float"]
)
def test_e28_absurd_chunk_shapes(repo: Repository, root: Path, chunk_shape: list[Any]) -> None:
    grid = {"name": "regular", "configuration": {"chunk_shape": chunk_shape}}
    session = repo.writable_session("main")
    _set(session, "b/zarr.json", json.dumps({**_ARRAY, "chunk_grid": grid}).encode())
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        session.commit("absurd chunks")
    check(info.value, ErrorKind.INVALID_INPUT, "'b/zarr.json'", "othing was committed")


@pytest.mark.parametrize("key", [1, b"a/c/0", None, ("a", "c")], ids=repr)
def test_e29_non_string_keys(repo: Repository, root: Path, key: Any) -> None:
    store = repo.writable_session("main").store
    proto = default_buffer_prototype()
    with unchanged(root):
        for coro in (
            lambda: store.get(key, proto),
            lambda: store.exists(key),
            lambda: store.set(key, proto.buffer.from_bytes(b"x")),
            lambda: store.delete(key),
        ):
            with pytest.raises(InvalidInputError) as info:
                sync(coro())
            check(info.value, ErrorKind.INVALID_INPUT, "store keys must be str")
    assert not store.session.has_uncommitted_changes


# -- commit arguments -------------------------------------------------------------------------


def test_e30_commit_message_and_metadata_of_the_wrong_type(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    with unchanged(root, strict=False):
        with pytest.raises(InvalidInputError) as info:
            session.commit(42)  # type: ignore[arg-type]
        check(info.value, ErrorKind.INVALID_INPUT, "message must be a str")
        with pytest.raises(InvalidInputError) as info:
            session.commit("x", {"when": object()})
        check(info.value, ErrorKind.INVALID_INPUT, "JSON-serialisable")
        with pytest.raises(InvalidInputError) as info:
            session.commit("x", [1, 2])  # type: ignore[arg-type]
        check(info.value, ErrorKind.INVALID_INPUT, "must be a dict")
    session.commit("fine")


@pytest.mark.parametrize("tries", [-1, "3", 2.5], ids=repr)
def test_e31_invalid_rebase_tries(repo: Repository, root: Path, tries: Any) -> None:
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    with unchanged(root, strict=False), pytest.raises(InvalidInputError) as info:
        session.commit("x", rebase_tries=tries)
    check(info.value, ErrorKind.INVALID_INPUT, "rebase_tries")


# -- concurrent changes -----------------------------------------------------------------------


def test_e32_overlapping_concurrent_commits(repo: Repository, root: Path) -> None:
    first, second = repo.writable_session("main"), repo.writable_session("main")
    _array(first)[:4] = 1
    _array(second)[2:6] = 2  # shares chunk a/c/0 with the first
    first.commit("first")
    with unchanged(root, strict=False), pytest.raises(RebaseFailedError) as info:
        second.commit("second")
    check(info.value, ErrorKind.REBASE_FAILED, "'a/c/0'", "start a new session")
    assert isinstance(info.value, ConflictError)
    assert ("a/c/0" in {k for c in info.value.conflicts for k in c.keys}) and len(
        info.value.conflicts
    ) == 1


def test_e33_branch_reset_under_an_open_session(repo: Repository, root: Path) -> None:
    (_, root_info) = list(repo.ancestry(branch="main"))
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    repo.reset_branch("main", root_info.id)
    with unchanged(root, strict=False), pytest.raises(RebaseFailedError) as info:
        session.commit("on a rewritten history")
    check(info.value, ErrorKind.REBASE_FAILED, "was reset", "Start a new session")


def test_e34_committing_to_a_deleted_branch(repo: Repository, root: Path) -> None:
    repo.create_branch("dev", repo.lookup_branch("main"))
    session = repo.writable_session("dev")
    _array(session)[:4] = 0
    repo.delete_branch("dev")
    with unchanged(root, strict=False), pytest.raises(NotFoundError) as info:
        session.commit("to nowhere")
    check(info.value, ErrorKind.NOT_FOUND, "'dev' was deleted", "nothing was committed")


# -- repository locations ---------------------------------------------------------------------


def test_e35_repository_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data.zarr"
    path.write_bytes(b"not a directory")
    with pytest.raises(InvalidInputError) as info:
        Repository.open_or_create(local_filesystem_storage(path))
    check(info.value, ErrorKind.INVALID_INPUT, "is a file, not a directory", "directory")
    assert path.read_bytes() == b"not a directory"


def test_e36_repository_of_a_newer_format_version(repo: Repository, root: Path) -> None:
    config = repo._assets.config
    newer = RepoConfig(config.repo_id, FORMAT_VERSION + 1, config.created_at)
    (root / "config.json").write_bytes(newer.encode())
    with unchanged(root), pytest.raises(FormatVersionError) as info:
        Repository.open(local_filesystem_storage(root))
    check(info.value, ErrorKind.FORMAT_VERSION, f"format version {FORMAT_VERSION + 1}", "upgrade")


def test_e37_opening_nothing_or_creating_twice(
    repo: Repository, root: Path, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError) as info:
        Repository.open(local_filesystem_storage(tmp_path / "nothing"))
    check(info.value, ErrorKind.NOT_FOUND, "no repository at", "Repository.create")
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        Repository.create(local_filesystem_storage(root))
    check(info.value, ErrorKind.INVALID_INPUT, "already exists", "Repository.open")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError) as info:
        Repository.create(local_filesystem_storage(other))
    check(info.value, ErrorKind.INVALID_INPUT, "is not empty", "empty or new location")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("location", [42, None, b"data/repo"], ids=repr)
def test_e38_a_location_that_is_neither_a_storage_a_path_nor_a_url(
    tmp_path: Path, location: Any
) -> None:
    # paths and URLs are locations (Repository.open("data/repo"), "s3://bucket/prefix")
    for call in (Repository.open, Repository.create, Repository.open_or_create, Repository.exists):
        with pytest.raises(InvalidInputError) as info:
            call(location)
        check(
            info.value,
            ErrorKind.INVALID_INPUT,
            "expected a storage such as local_filesystem_storage(path), a path or a URL",
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotFoundError):  # a path names a (here missing) repository
        Repository.open(str(tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def _unpickle_in_child(blob: bytes, out: Any) -> None:
    try:
        pickle.loads(blob)
        out.put(("no error", ""))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent process
        out.put((type(e).__name__, f"{e}\n{traceback.format_exc()}"))


def test_e39_in_memory_repository_in_another_process() -> None:
    repo = Repository.create(in_memory_storage())
    blob = pickle.dumps(repo.readonly_session("main"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_unpickle_in_child, args=(blob, out))
    child.start()
    kind, text = out.get(timeout=120)
    child.join(120)
    assert kind == "InvalidInputError", text
    assert "only in the process that created it" in text
    assert "local_filesystem_storage(path)" in text


# -- forks, lazy writes and jobs --------------------------------------------------------------


def test_e40_committing_with_an_unmerged_fork(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    fork = session.fork()
    _array(fork)[:4] = 1  # the fork's writes never reach the session
    _array(session)[4:] = 2
    with unchanged(root, strict=False), pytest.raises(UnmergedWritesError) as info:
        session.commit("would lose the fork's writes")
    check(
        info.value,
        ErrorKind.UNMERGED_WRITES,
        "session.fork()",
        "never merged back",
        "session.merge(fork)",
        "fork.discard_changes()",
    )
    session.merge(fork)
    session.commit("with the fork's writes")  # the fix works
    np.testing.assert_array_equal(
        _array(repo.readonly_session("main"))[:], [1, 1, 1, 1, 2, 2, 2, 2]
    )


def test_e41_committing_a_lazy_write_that_was_never_computed(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    lazy = store_sessions(
        da.zeros(8, chunks=4, dtype="int64"), _array(session), session, compute=False
    )
    with unchanged(root), pytest.raises(UnmergedWritesError) as info:
        session.commit("would commit without the lazy write")
    check(
        info.value,
        ErrorKind.UNMERGED_WRITES,
        "never delivered their result",
        "store_sessions into ['a'] (compute=False",
        "dask.compute(",
        "session.discard_changes()",
        "Nothing was committed",
    )
    lazy.compute(scheduler="sync")  # the fix: compute it, then commit
    session.commit("with the lazy write")
    assert not _array(repo.readonly_session("main"))[:].any()


def test_e42_a_snapshot_id_where_a_branch_is_expected(repo: Repository, root: Path) -> None:
    tip = repo.lookup_branch("main")
    with unchanged(root):
        for call in (
            lambda: repo.writable_session(tip),
            lambda: repo.readonly_session(tip),
            lambda: repo.lookup_branch(tip),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            check(
                info.value,
                ErrorKind.NOT_FOUND,
                f"branch {tip!r} does not exist",
                "looks like a snapshot id",
                f"readonly_session(snapshot_id={tip!r})",
            )


def test_e43_opening_a_plain_zarr_store_as_a_repository(tmp_path: Path) -> None:
    path = tmp_path / "plain.zarr"
    zarr.create_array(str(path), shape=(4,), chunks=(2,), dtype="int64")[:] = 1
    before = _fingerprint(path, strict=True)
    for location in (path, str(path), local_filesystem_storage(path)):
        with pytest.raises(NotFoundError) as info:
            Repository.open(location)
        check(
            info.value,
            ErrorKind.NOT_FOUND,
            "no repository at",
            "plain Zarr store, not a repository",
            "Open it with zarr or xarray directly",
            "import it",
        )
    with pytest.raises(InvalidInputError) as info:
        Repository.create(path)  # nor is it turned into one
    check(info.value, ErrorKind.INVALID_INPUT, "is not empty", "empty or new location")
    assert _fingerprint(path, strict=True) == before


def test_e44_numpy_data_given_to_store_sessions(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    with unchanged(root), pytest.raises(TypeError) as info:
        store_sessions([np.zeros(8, dtype="int64")], [_array(session)], session)
    check(info.value, None, "must be a dask array", "ndarray", "target[...] = data")
    assert not session.has_uncommitted_changes


def test_e45_guarded_ref_changes_when_the_ref_moved(repo: Repository, root: Path) -> None:
    (_, first) = list(repo.ancestry(branch="main"))
    tip = repo.lookup_branch("main")
    repo.create_branch("dev", tip)
    repo.create_tag("v1", tip)
    with unchanged(root):
        for call in (
            lambda: repo.reset_branch("main", first.id, from_snapshot_id=first.id),
            lambda: repo.delete_branch("dev", from_snapshot_id=first.id),
        ):
            with pytest.raises(ConflictError) as info:
                call()
            check(
                info.value,
                ErrorKind.BRANCH_MOVED,
                f"is at snapshot {tip}, not at {first.id}",
                "Nothing was changed",
                "repo.lookup_branch",
            )
        with pytest.raises(ConflictError) as info:
            repo.delete_tag("v1", from_snapshot_id=first.id)
        check(info.value, ErrorKind.TAG_MOVED, f"points at {tip}", "nothing was deleted")
    assert repo.lookup_branch("main") == repo.lookup_branch("dev") == repo.lookup_tag("v1") == tip


def test_e46_resetting_a_branch_to_none(repo: Repository, root: Path) -> None:
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        repo.reset_branch("main", None)  # type: ignore[arg-type]
    check(info.value, ErrorKind.INVALID_INPUT, "got None", "repo.delete_branch(branch)")
    assert "main" in repo.list_branches()  # never a deletion


def test_e47_as_of_without_a_branch(repo: Repository, root: Path) -> None:
    now = datetime.now(UTC)
    with unchanged(root):
        for call in (
            lambda: repo.readonly_session(as_of=now),
            lambda: repo.readonly_session(tag="v1", as_of=now),
            lambda: repo.readonly_session(
                "main", snapshot_id=repo.lookup_branch("main"), as_of=now
            ),
        ):
            with pytest.raises(InvalidInputError) as info:
                call()
            check(info.value, ErrorKind.INVALID_INPUT, "as_of= needs branch=")
        with pytest.raises(NotFoundError) as info:
            repo.readonly_session("main", as_of=datetime(2000, 1, 1, tzinfo=UTC))
        check(info.value, ErrorKind.NOT_FOUND, "has no snapshot as old as 2000-01-01")


@pytest.mark.parametrize(
    "solver", ["ConflictDetector", VersionSelection.USE_OURS, 3], ids=["str", "enum", "int"]
)
def test_e48_rebase_with_something_that_is_not_a_solver(
    repo: Repository, root: Path, solver: Any
) -> None:
    session = repo.writable_session("main")
    _array(session)[:4] = 0
    with unchanged(root, strict=False), pytest.raises(InvalidInputError) as info:
        session.commit("x", rebase_with=solver)
    check(
        info.value,
        ErrorKind.INVALID_INPUT,
        "rebase_with must be a conflict solver",
        "ConflictDetector()",
        "BasicConflictSolver(...)",
    )
    session.commit("fine", rebase_with=ConflictDetector())


def test_e49_rebase_tries_zero_when_the_branch_moved(repo: Repository, root: Path) -> None:
    mine, theirs = repo.writable_session("main"), repo.writable_session("main")
    _array(mine)[4:] = 1
    _array(theirs)[:4] = 2  # disjoint: a rebase would succeed
    landed = theirs.commit("theirs")
    with unchanged(root, strict=False), pytest.raises(ConflictError) as info:
        mine.commit("mine", rebase_tries=0)
    check(
        info.value,
        ErrorKind.COMMIT_CONFLICT,
        f"moved to {landed}",
        "rebase_tries=0 never rebases",
        "Nothing was committed",
    )
    assert not isinstance(info.value, RebaseFailedError)
    mine.commit("mine, rebased")  # the session is unchanged: the default rebases
    np.testing.assert_array_equal(_array(repo.readonly_session("main"))[:], [2] * 4 + [1] * 4)


def test_e50_resume_with_a_name_used_by_another_job(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    store_sessions(da.zeros(8, chunks=4, dtype="int64"), _array(session), session, resume="ingest")
    other = zarr.create_array(session.store, name="b", shape=(4,), chunks=(2,), dtype="int64")
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        store_sessions(da.ones(4, chunks=2, dtype="int64"), other, session, resume="ingest")
    check(
        info.value,
        ErrorKind.INVALID_INPUT,
        "a job named 'ingest' already exists",
        "wrote something else",
        "nothing was written",
        "choose another name",
    )
    with unchanged(root), pytest.raises(InvalidInputError) as info:
        store_sessions(da.ones(4, chunks=2, dtype="int64"), other, session, resume="a/b")
    check(info.value, ErrorKind.INVALID_INPUT, "invalid job name 'a/b'")
    assert "b/c/0" not in {k for keys in session.status().updated_chunks.values() for k in keys}
    session.commit("the first job")


def test_e51_rectilinear_chunk_grid_given_to_the_dask_writers(repo: Repository, root: Path) -> None:
    session = repo.writable_session("main")
    if "rectilinear_chunks" not in zarr.config.get("array"):  # zarr < 3.4: regular grids only
        with pytest.raises((TypeError, ValueError)):
            zarr.create_array(session.store, name="r", shape=(10,), chunks=[[3, 7]], dtype="f8")  # type: ignore[arg-type]
        return
    with zarr.config.set({"array.rectilinear_chunks": True}):
        target = zarr.create_array(
            session.store, name="r", shape=(10,), chunks=[[3, 7]], dtype="f8"
        )
        before = session.changes()
        with unchanged(root), pytest.raises(InvalidInputError) as info:
            store_sessions(da.ones(10, chunks=(3, 7)), target, session)
        check(
            info.value,
            ErrorKind.INVALID_INPUT,
            "rectilinear (variable) chunk grid",
            "nothing was written",
            "array[...] = values through session.store",
        )
        assert session.changes().chunks == before.chunks


def test_e52_ref_names_too_long_for_the_storage(repo: Repository, root: Path) -> None:
    tip = repo.lookup_branch("main")
    with unchanged(root):
        for make, name, limit in (
            (repo.create_branch, "b" * 249, 248),
            (repo.create_tag, "t" * 239, 238),
        ):
            with pytest.raises(InvalidInputError) as info:
                make(name, tip)
            check(
                info.value,
                ErrorKind.INVALID_INPUT,
                f"is {len(name)} bytes long",
                f"names of at most {limit} bytes",
                "choose a shorter name",
            )


@pytest.mark.parametrize("url", ["ftp://host/repo", "hdfs://namenode/repo", "http://host/repo"])
def test_e53_unknown_url_scheme(tmp_path: Path, url: str) -> None:
    for call in (Repository.open, Repository.create, Repository.open_or_create, Repository.exists):
        with pytest.raises(InvalidInputError) as info:
            call(url)
        scheme = url.partition(":")[0]
        check(
            info.value,
            ErrorKind.INVALID_INPUT,
            f"unsupported storage URL scheme {scheme!r}",
            "s3://bucket/prefix",
            "a local path",
        )
    with pytest.raises(InvalidInputError) as info:
        storage_from_url("s3://bucket/prefix", endpoint="http://127.0.0.1:9000")
    check(info.value, ErrorKind.INVALID_INPUT, "unknown option(s) ['endpoint']", "endpoint_url")
