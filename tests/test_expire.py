"""expire_snapshots: what expires, how history walks skip it, and what reading it gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    CorruptObjectError,
    ErrorKind,
    ExpiredSnapshotError,
    InvalidInputError,
    NotFoundError,
    RebaseFailedError,
    Repository,
    local_filesystem_storage,
)
from icechunk_dask._refs import set_branch
from icechunk_dask.cli import main
from icechunk_dask.storage import LocalFileSystemStorage
from tests.helpers import make_array, read_array
from tests.lifecycle_helpers import age


def _repo(path: Path) -> Repository:
    return Repository.create(local_filesystem_storage(path, durable=False))


def _commit(repo: Repository, value: float, branch: str = "main") -> str:
    session = repo.writable_session(branch)
    try:
        array = zarr.open_array(session.store, path="a")
    except FileNotFoundError:
        array = make_array(session)
    array[:] = value
    return session.commit(f"v{value:g}")


def _history(repo: Repository, **ref: str) -> list[str]:
    return [info.message for info in repo.ancestry(**ref)]


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Repository, list[str], datetime]:
    """main: init <- v1 <- v2 (tag t2) <- v3 <- v4 | cutoff | v5 (tip)."""
    repo = _repo(tmp_path)
    ids = [_commit(repo, v) for v in (1, 2, 3, 4)]
    repo.create_tag("t2", ids[1])
    cutoff = datetime.now(UTC)
    ids.append(_commit(repo, 5))
    return repo, ids, cutoff


def test_old_snapshots_expire_except_tips_tags_and_the_first(
    chain: tuple[Repository, list[str], datetime],
) -> None:
    repo, ids, cutoff = chain
    root = list(repo.ancestry(branch="main"))[-1].id
    expired = repo.expire_snapshots(cutoff)
    assert expired == {ids[0], ids[2], ids[3]}  # v1, v3, v4; not the tag, tip or root
    # history continues with the nearest ancestor that did not expire
    assert _history(repo, branch="main") == ["v5", "v2", "Repository initialized"]
    assert _history(repo, tag="t2") == ["v2", "Repository initialized"]
    assert list(repo.ancestry(branch="main"))[-1].id == root
    # the data of what is left is unchanged
    np.testing.assert_array_equal(read_array(repo.readonly_session("main")), 5.0)
    np.testing.assert_array_equal(read_array(repo.readonly_session(tag="t2")), 2.0)
    # a second run has nothing left to do
    assert repo.expire_snapshots(cutoff) == set()


def test_reading_an_expired_snapshot_is_a_typed_error(
    chain: tuple[Repository, list[str], datetime],
) -> None:
    repo, ids, cutoff = chain
    repo.expire_snapshots(cutoff)
    # in this handle and in a fresh one (nothing cached)
    for handle in (repo, Repository.open(repo.storage)):
        calls = [
            lambda h: h.readonly_session(snapshot_id=ids[2]),
            lambda h: h.lookup_snapshot(ids[2]),
            lambda h: h.create_branch("old", ids[2]),
            lambda h: h.create_tag("old", ids[2]),
            lambda h: h.reset_branch("main", ids[2]),
            lambda h: h.diff(from_snapshot_id=ids[2], to_branch="main"),
            lambda h: list(h.ancestry(snapshot_id=ids[2])),
        ]
        for call in calls:
            with pytest.raises(ExpiredSnapshotError) as info:
                call(handle)
            assert isinstance(info.value, NotFoundError)
            assert info.value.kind == ErrorKind.EXPIRED_SNAPSHOT
            assert info.value.snapshot_id == ids[2]
            assert "was expired" in str(info.value)
    assert handle.lookup_branch("main") == ids[4]  # nothing changed


def test_sessions_open_on_a_snapshot_keep_working_and_commits_rebase_through_it(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path)
    base = _commit(repo, 1)
    reader = repo.readonly_session(snapshot_id=base)
    writer = repo.writable_session("main")  # based on `base`
    make_array(writer, "b")[:] = 7.0
    _commit(repo, 2)  # the branch moves on
    _commit(repo, 3)
    assert base in repo.expire_snapshots(datetime.now(UTC))
    np.testing.assert_array_equal(read_array(reader), 1.0)
    # the commit walks from the tip back to its base through expired snapshots
    writer.commit("b")
    session = repo.readonly_session("main")
    np.testing.assert_array_equal(read_array(session, "b"), 7.0)
    np.testing.assert_array_equal(read_array(session), 3.0)


def test_a_commit_whose_history_was_collected_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _commit(repo, 1)
    writer = repo.writable_session("main")
    make_array(writer, "b")[:] = 7.0
    _commit(repo, 2)
    _commit(repo, 3)
    repo.expire_snapshots(datetime.now(UTC))
    # collect with a cutoff after the session started (what the docs say not to do)
    age(tmp_path)
    repo.garbage_collect(datetime.now(UTC))
    with pytest.raises(RebaseFailedError, match="expired and garbage-collected"):
        writer.commit("b")
    assert _history(repo, branch="main")[0] == "v3"


def test_delete_expired_branches_and_tags(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _commit(repo, 1)
    repo.create_branch("old", first)
    repo.create_tag("old-tag", first)
    repo.create_branch("main-copy", first)
    cutoff = datetime.now(UTC)
    repo.create_branch("new", _commit(repo, 2))
    _commit(repo, 3, branch="main-copy")
    expired = repo.expire_snapshots(cutoff, delete_expired_branches=True, delete_expired_tags=True)
    assert repo.list_branches() == {"main", "main-copy", "new"}
    assert repo.list_tags() == set()
    assert first in expired  # nothing points at it any more
    with pytest.raises(ExpiredSnapshotError):
        repo.readonly_session(snapshot_id=first)
    # main is never deleted, even when its tip is old; the other old tips go and expire
    v3 = repo.lookup_branch("main-copy")
    assert repo.expire_snapshots(datetime.now(UTC), delete_expired_branches=True) == {v3}
    assert repo.list_branches() == {"main"}


def test_without_the_flags_old_refs_stay_and_protect_their_snapshots(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _commit(repo, 1)
    repo.create_branch("old", first)
    _commit(repo, 2)
    expired = repo.expire_snapshots(datetime.now(UTC))
    assert expired == set()  # v1 is a branch tip, v2 the main tip
    assert repo.list_branches() == {"main", "old"}


def test_older_than_must_be_a_datetime(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(InvalidInputError, match="must be a datetime"):
        repo.expire_snapshots("7d")  # type: ignore[arg-type]


def test_a_ref_moved_onto_a_snapshot_while_it_expires_keeps_it(tmp_path: Path) -> None:
    """reset_branch racing the expiration: the marker is withdrawn, the branch stays readable."""
    repo = _repo(tmp_path)
    ids = [_commit(repo, v) for v in (1, 2)]
    repo.create_branch("b", ids[1])
    cutoff = datetime.now(UTC)
    _commit(repo, 3)

    class Racing(LocalFileSystemStorage):
        async def put_if_absent(self, key: str, data: bytes) -> bool:
            if key == f"expired/{ids[0]}":
                # another process resets branch b onto the snapshot being expired
                await set_branch(storage.assets, "b", ids[0], create=False)  # type: ignore[attr-defined]
            return await super().put_if_absent(key, data)

    storage = Racing(tmp_path, durable=False)
    racing = Repository.open(storage)
    storage.assets = racing._assets  # type: ignore[attr-defined]
    assert racing.expire_snapshots(cutoff) == set()  # v1's expiry was withdrawn
    assert not (tmp_path / "expired" / ids[0]).exists()
    for handle in (racing, Repository.open(repo.storage)):
        assert handle.lookup_branch("b") == ids[0]
        np.testing.assert_array_equal(read_array(handle.readonly_session("b")), 1.0)
        assert _history(handle, branch="main") == ["v3", "v2", "v1", "Repository initialized"]


def test_expiry_markers_are_bound_to_their_snapshot(
    chain: tuple[Repository, list[str], datetime],
) -> None:
    repo, ids, cutoff = chain
    repo.expire_snapshots(cutoff)
    root = Path(repo.storage.root)  # type: ignore[attr-defined]
    (root / "expired" / ids[3]).write_bytes((root / "expired" / ids[2]).read_bytes())
    fresh = Repository.open(repo.storage)
    with pytest.raises(CorruptObjectError, match="expiry marker of"):
        list(fresh.ancestry(branch="main"))
    assert not fresh.verify().ok


def test_history_walks_after_garbage_collection(
    chain: tuple[Repository, list[str], datetime],
) -> None:
    """Expired snapshots deleted: walks use the markers alone; reads still say 'expired'."""
    repo, ids, cutoff = chain
    repo.expire_snapshots(cutoff)
    root = Path(repo.storage.root)  # type: ignore[attr-defined]
    age(root)
    summary = repo.garbage_collect(datetime.now(UTC) + timedelta(days=1))
    assert summary.snapshots_deleted == 3
    assert not (root / "snapshots" / ids[2]).exists()
    fresh = Repository.open(repo.storage)
    assert _history(fresh, branch="main") == ["v5", "v2", "Repository initialized"]
    with pytest.raises(ExpiredSnapshotError):
        fresh.readonly_session(snapshot_id=ids[2])
    assert fresh.verify(chunks=True).ok


def test_cli_log_and_expire(
    chain: tuple[Repository, list[str], datetime], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, ids, cutoff = chain
    location = str(repo.storage.root)  # type: ignore[attr-defined]
    assert main(["expire", location, "--older-than", cutoff.isoformat(), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["expired"]) == {ids[0], ids[2], ids[3]}
    assert main(["log", location, "--json"]) == 0
    assert [e["message"] for e in json.loads(capsys.readouterr().out)] == [
        "v5",
        "v2",
        "Repository initialized",
    ]
    assert main(["show", location, "main~1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == ids[1]
    assert main(["show", location, ids[2]]) == 1
    assert "expired" in capsys.readouterr().err
