"""Icechunk's API where its users expect it: diffs, guarded refs, solvers, aliases, URLs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from icechunk_dask import (
    BasicConflictSolver,
    ConflictError,
    ConflictType,
    Diff,
    ErrorKind,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    RebaseFailedError,
    Repository,
    VersionSelection,
    local_filesystem_storage,
)
from icechunk_dask._session import Session
from icechunk_dask.dask import store_dask
from icechunk_dask.xarray import to_icechunk
from tests.dask_support import open_main

ROOT = Path(__file__).resolve().parents[1]


def _repo(tmp_path: Path) -> Repository:
    return Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))


def _first_commit(repo: Repository) -> str:
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w", zarr_format=3)
    a = root.create_array("a", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=-1)
    a[:] = 1
    return s.commit("first")


def test_repository_diff_and_session_status_are_one_diff_type(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _first_commit(repo)
    repo.create_tag("v1", first)
    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    root.attrs["title"] = "x"
    zarr.open_array(s.store, path="a")[:2, 2:] = 5
    root.create_array("b", shape=(2,), chunks=(1,), dtype="i4")[:] = 3
    status = s.status()
    second = s.commit("second")
    d = repo.diff(from_tag="v1", to_branch="main")
    assert isinstance(d, Diff) and isinstance(status, Diff)
    assert d.new_arrays == {"/b"} and d.updated_groups == {"/"}
    assert d.updated_chunks == {"/a": [(0, 1)], "/b": [(0,), (1,)]}
    assert status.updated_chunks == d.updated_chunks and status.new_arrays == d.new_arrays
    assert repo.diff(from_snapshot_id=second, to_branch="main").is_empty()
    back = repo.diff(from_branch="main", to_snapshot_id=first)
    assert back.deleted_arrays == {"/b"}
    with pytest.raises(InvalidInputError, match="exactly one"):
        repo.diff(from_tag="v1", to_branch="main", to_tag="v1")
    assert json.loads(json.dumps(d.to_dict()))["updated_chunks"]["/a"] == [[0, 1]]


def test_lookup_snapshot_and_as_of(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _first_commit(repo)
    info = repo.lookup_snapshot(first)
    assert (info.id, info.message) == (first, "first")
    between = datetime.now(UTC)
    time.sleep(0.01)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = 2
    s.commit("second")
    old = repo.readonly_session("main", as_of=between)
    assert old.snapshot_id == first
    assert zarr.open_array(old.store, path="a", mode="r")[0, 0] == 1
    naive = between.replace(tzinfo=None)  # naive times are UTC
    assert repo.readonly_session("main", as_of=naive).snapshot_id == first
    with pytest.raises(NotFoundError, match="no snapshot as old"):
        repo.readonly_session("main", as_of=between - timedelta(days=365))
    with pytest.raises(InvalidInputError, match="as_of"):
        repo.readonly_session(tag="v1", as_of=between)
    with pytest.raises(NotFoundError):
        repo.lookup_snapshot("0" * 20)


def test_guarded_reset_and_delete(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _first_commit(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = 2
    second = s.commit("second")
    with pytest.raises(InvalidInputError, match="delete_branch"):  # never a deletion
        repo.reset_branch("main", None)  # type: ignore[arg-type]
    assert repo.lookup_branch("main") == second
    with pytest.raises(ConflictError) as info:
        repo.reset_branch("main", first, from_snapshot_id=first)  # the tip moved on
    assert info.value.kind == ErrorKind.BRANCH_MOVED
    assert repo.lookup_branch("main") == second
    repo.reset_branch("main", first, from_snapshot_id=second)
    assert repo.lookup_branch("main") == first
    repo.create_branch("dev", second)
    with pytest.raises(ConflictError):
        repo.delete_branch("dev", from_snapshot_id=first)
    assert "dev" in repo.list_branches()
    repo.delete_branch("dev", from_snapshot_id=second)
    assert "dev" not in repo.list_branches()
    repo.create_tag("t", first)
    with pytest.raises(ConflictError):
        repo.delete_tag("t", from_snapshot_id=second)
    repo.delete_tag("t", from_snapshot_id=first)


COMMITTER = textwrap.dedent(
    """
    import json, sys
    import zarr
    from icechunk_dask import RebaseFailedError, Repository, local_filesystem_storage
    repo = Repository.open(local_filesystem_storage(sys.argv[1], durable=False))
    acked, refused = [], 0
    for i in range(int(sys.argv[2])):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a").attrs["i"] = i
        try:
            acked.append(s.commit(f"commit {i}"))
        except RebaseFailedError:  # its base was reset away: not acknowledged, fine
            refused += 1
    print(json.dumps(acked))
    """
)

RESETTER = textwrap.dedent(
    """
    import json, sys, time
    from icechunk_dask import ConflictError, Repository, local_filesystem_storage
    repo = Repository.open(local_filesystem_storage(sys.argv[1], durable=False))
    done, refused = [], 0
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        tip = repo.lookup_branch("main")
        parent = repo.lookup_snapshot(tip).parent_id
        if parent is None or repo.lookup_snapshot(parent).parent_id is None:
            continue  # keep the first commit (the array)
        try:
            repo.reset_branch("main", parent, from_snapshot_id=tip)
            done.append(tip)
        except ConflictError:
            refused += 1
    print(json.dumps({"reset_from": done, "refused": refused}))
    """
)


@pytest.mark.slow
def test_guarded_reset_never_drops_a_commit_acknowledged_meanwhile(tmp_path: Path) -> None:
    """A committer and a resetter race in two processes; check every acknowledged commit."""
    repo = _repo(tmp_path)
    _first_commit(repo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "repo"), arg],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for code, arg in ((COMMITTER, "40"), (RESETTER, "6"))
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    acked = json.loads(outs[0][0])
    resets = json.loads(outs[1][0])
    assert resets["reset_from"], "the race never reset: the test proves nothing"
    history = {i.id for i in repo.ancestry(branch="main")}
    # a commit may only vanish if a reset was guarded by it or by a newer commit
    dropped_on_purpose: set[str] = set()
    for tip in resets["reset_from"]:
        dropped_on_purpose |= {i.id for i in repo.ancestry(snapshot_id=tip)}
    lost = [c for c in acked if c not in history and c not in dropped_on_purpose]
    assert lost == []


def _conflicting_sessions(repo: Repository) -> tuple[object, object]:
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="a")[:2, :2] = 10  # chunk (0, 0)
    zarr.open_array(two.store, path="a")[:2, :2] = 20  # the same chunk
    zarr.open_array(two.store, path="a")[2:, 2:] = 30  # and another one
    one.commit("one")
    return one, two


@pytest.mark.parametrize(
    ("choice", "corner"), [(VersionSelection.USE_OURS, 20), (VersionSelection.USE_THEIRS, 10)]
)
def test_basic_conflict_solver_settles_chunk_collisions(
    tmp_path: Path, choice: VersionSelection, corner: int
) -> None:
    repo = _repo(tmp_path)
    _first_commit(repo)
    _, two = _conflicting_sessions(repo)
    two.commit("two", rebase_with=BasicConflictSolver(on_chunk_conflict=choice))  # type: ignore[attr-defined]
    a = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:]
    assert a[0, 0] == corner and a[3, 3] == 30 and a[0, 3] == 1


def test_default_and_failing_solvers_report_typed_conflicts(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _first_commit(repo)
    _, two = _conflicting_sessions(repo)
    for solver in (None, BasicConflictSolver(on_chunk_conflict=VersionSelection.FAIL)):
        with pytest.raises(RebaseFailedError) as info:
            two.commit("two", rebase_with=solver)  # type: ignore[attr-defined]
        (c,) = info.value.conflicts
        assert (c.conflict_type, c.path, c.conflicted_chunks) == (
            ConflictType.CHUNK_DOUBLE_UPDATE,
            "/a",
            ((0, 0),),
        )
    with pytest.raises(InvalidInputError, match="rebase_with"):
        two.commit("two", rebase_with="ours")  # type: ignore[attr-defined]


def test_metadata_collisions_are_never_settled(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _first_commit(repo)
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="a").attrs["x"] = 1
    zarr.open_array(two.store, path="a").attrs["x"] = 2
    one.commit("one")
    with pytest.raises(RebaseFailedError) as info:
        two.commit("two", rebase_with=BasicConflictSolver())
    assert {c.conflict_type for c in info.value.conflicts} == {
        ConflictType.ZARR_METADATA_DOUBLE_UPDATE
    }


def test_allow_empty_and_rebase_tries_zero(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _first_commit(repo)
    s = repo.writable_session("main")
    with pytest.raises(NoChangesToCommitError, match="allow_empty"):
        s.commit("nothing")
    empty = s.commit("nothing, on purpose", allow_empty=True)
    assert repo.lookup_snapshot(empty).parent_id == first
    assert repo.diff(from_snapshot_id=first, to_snapshot_id=empty).is_empty()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="a").attrs["x"] = 1
    zarr.open_array(two.store, path="b" if False else "a")[3, 3] = 7
    one.commit("one")
    tip = repo.lookup_branch("main")
    with pytest.raises(ConflictError, match="rebase_tries=0 never rebases"):
        two.commit("two", rebase_tries=0)
    assert repo.lookup_branch("main") == tip


def test_icechunk_aliases_run_migrating_code(tmp_path: Path) -> None:
    """``icechunk.xarray.to_icechunk`` and ``icechunk.dask.store_dask`` as Icechunk's docs use them."""
    repo = _repo(tmp_path)
    ds = xr.Dataset({"v": (("t", "x"), da.arange(32.0, chunks=8).reshape(8, 4).rechunk((2, 4)))})
    session = repo.writable_session("main")
    to_icechunk(ds, session, mode="w", chunkmanager_store_kwargs={"scheduler": "threads"})
    session.commit("to_icechunk")
    xr.testing.assert_identical(open_main(repo), ds)

    session = repo.writable_session("main")
    fork = session.fork()
    target = zarr.open_array(fork.store, path="v")
    remote = store_dask(sources=[da.zeros((8, 4), chunks=(2, 4))], targets=[target])
    session.merge(remote)
    session.commit("store_dask")
    assert (open_main(repo)["v"].values == 0).all()
    with pytest.raises(InvalidInputError, match="lock"):
        store_dask(sources=[da.zeros((8, 4), chunks=(2, 4))], targets=[target], lock=True)


def test_repositories_open_by_path_and_url(tmp_path: Path) -> None:
    repo = Repository.create(str(tmp_path / "repo"))
    _first_commit(repo)
    assert Repository.exists(f"file://{tmp_path / 'repo'}")
    again = Repository.open(tmp_path / "repo")
    assert again.lookup_branch("main") == repo.lookup_branch("main")
    assert Repository.open_or_create(str(tmp_path / "repo")).repo_id == repo.repo_id
    with pytest.raises(InvalidInputError, match="scheme"):
        Repository.open("ftp://host/x")
    np.testing.assert_array_equal(
        zarr.open_array(again.readonly_session("main").store, path="a", mode="r")[:],
        np.ones((4, 4)),
    )


def test_commit_takes_icechunks_options_and_defaults() -> None:
    """``commit(message, metadata=None, *, rebase_with=None, rebase_tries=1_000, allow_empty=False)``."""
    params = inspect.signature(Session.commit).parameters
    assert set(params) == {
        "self",
        "message",
        "metadata",
        "allow_empty",
        "rebase_with",
        "rebase_tries",
    }
    assert params["metadata"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["metadata"].default is None
    assert params["rebase_with"].default is None
    assert params["rebase_tries"].default == 1_000
    assert params["allow_empty"].default is False
    for name in ("rebase_with", "rebase_tries", "allow_empty"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
