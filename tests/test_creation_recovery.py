"""Interrupted creations: a creator killed at every step, and partial states written by hand.

Creation writes the first snapshot, then entry 0 of ``main``'s log, then
``config.json``. A creator that dies between the entry and the config used to
leave a location that ``open`` called empty and ``create`` called busy,
forever. Now ``create`` / ``open_or_create`` finish such a creation once it is
stale (or at once if it is damaged) and say so with a ``RecoveryWarning``; a
creation still running elsewhere is waited for.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from icechunk_dask import (
    InvalidInputError,
    NotFoundError,
    RecoveryWarning,
    Repository,
    _bootstrap,
    local_filesystem_storage,
)
from icechunk_dask._bootstrap import create_repository
from icechunk_dask._sync import run
from icechunk_dask.format import (
    FORMAT_VERSION,
    BranchRef,
    RepoConfig,
    Snapshot,
    branch_ref_key,
    new_id,
)
from icechunk_dask.storage import LocalFileSystemStorage
from tests.lifecycle_helpers import age, files

SPAWN = mp.get_context("spawn")
TIMEOUT = 120


class KillingStorage(LocalFileSystemStorage):
    """Local storage that SIGKILLs its own process at the first matching call."""

    def __init__(self, path: str, op: str, prefix: str, when: str) -> None:
        super().__init__(path)
        self.op, self.prefix, self.when = op, prefix, when

    def _maybe_die(self, op: str, key: str, when: str) -> None:
        if (op, when) == (self.op, self.when) and key.startswith(self.prefix):
            os.kill(os.getpid(), signal.SIGKILL)

    async def put(self, key: str, data: bytes) -> None:
        self._maybe_die("put", key, "before")
        await super().put(key, data)
        self._maybe_die("put", key, "after")

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        self._maybe_die("put_if_absent", key, "before")
        won = await super().put_if_absent(key, data)
        self._maybe_die("put_if_absent", key, "after")
        return won

    async def durability_barrier(self) -> None:
        self._maybe_die("durability_barrier", "", "before")
        await super().durability_barrier()
        self._maybe_die("durability_barrier", "", "after")


def _doomed_creator(root: str, op: str, prefix: str, when: str, out: Any) -> None:
    try:
        run(create_repository(KillingStorage(root, op, prefix, when)))
        out.put("the crash point was never reached")
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(traceback.format_exc())


#: (operation, key prefix, before/after, what is left: "nothing" | "entry" | "repository")
CRASH_POINTS = [
    ("put", "snapshots/", "before", "nothing"),
    ("put", "snapshots/", "after", "nothing"),
    ("durability_barrier", "", "before", "nothing"),
    ("durability_barrier", "", "after", "nothing"),
    ("put_if_absent", "refs/branch.main/", "before", "nothing"),
    ("put_if_absent", "refs/branch.main/", "after", "entry"),
    ("put_if_absent", "config.json", "before", "entry"),
    ("put_if_absent", "config.json", "after", "repository"),
]


def _works(repo: Repository) -> None:
    """The repository works: a ref can be made, a fresh handle reads it, verify is clean."""
    repo.create_tag("t", repo.lookup_branch("main"))
    reopened = Repository.open(repo.storage)
    assert [i.message for i in reopened.ancestry(tag="t")] == ["Repository initialized"]
    assert reopened.verify().ok


@pytest.mark.parametrize(
    ("op", "prefix", "when", "left"),
    CRASH_POINTS,
    ids=[f"{w}-{op}-{p.rstrip('/') or 'all'}" for op, p, w, _ in CRASH_POINTS],
)
def test_a_creator_killed_at_each_step_leaves_a_recoverable_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, prefix: str, when: str, left: str
) -> None:
    out = SPAWN.Queue()
    creator = SPAWN.Process(target=_doomed_creator, args=(str(tmp_path), op, prefix, when, out))
    creator.start()
    creator.join(TIMEOUT)
    assert creator.exitcode == -signal.SIGKILL, out.get(timeout=5)
    storage = local_filesystem_storage(tmp_path)
    if left == "repository":
        _works(Repository.open(storage))
        return
    with pytest.raises(NotFoundError) as info:
        Repository.open(storage)
    assert ("interrupted creation" in str(info.value)) == (left == "entry")
    monkeypatch.setattr(_bootstrap, "STALE_CREATION", 0.0)  # as if it was long ago
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repo = Repository.open_or_create(storage)
    notes = [str(w.message) for w in caught if w.category is RecoveryWarning]
    assert len(notes) == (left == "entry"), notes
    if notes:
        assert "finished it" in notes[0] and str(tmp_path) in notes[0]
    _works(repo)
    # an orphan first snapshot (a creator killed after writing it) is garbage
    age(tmp_path)
    repo.garbage_collect(datetime.now(UTC))
    assert len([k for k in files(tmp_path) if k.startswith("snapshots/")]) == 1


def _entry(path: Path, seq: int, data: bytes) -> None:
    """Write entry ``seq`` of main's log by hand."""
    file = path / branch_ref_key("main", seq)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)


def _first_snapshot(path: Path) -> str:
    root = Snapshot(
        new_id(), None, datetime.now(UTC).isoformat(), "Repository initialized", {}, {}, {}
    )
    (path / "snapshots").mkdir(parents=True, exist_ok=True)
    (path / "snapshots" / root.id).write_bytes(root.encode())
    return root.id


def _ref(snapshot_id: str | None, written: datetime) -> BranchRef:
    return BranchRef(snapshot_id, None, uuid.uuid4().hex, written.isoformat())


def test_a_fresh_abandoned_creation_is_finished_once_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry(tmp_path, 0, _ref(_first_snapshot(tmp_path), datetime.now(UTC)).encode("main", 0))
    monkeypatch.setattr(_bootstrap, "STALE_CREATION", 0.5)
    with pytest.warns(RecoveryWarning, match=r"written \d+ s ago and config.json never"):
        repo = Repository.create(local_filesystem_storage(tmp_path))
    _works(repo)


def test_a_creation_in_progress_elsewhere_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other creator writes config.json while we wait: create refuses, open_or_create opens."""
    storage = local_filesystem_storage(tmp_path)
    _entry(tmp_path, 0, _ref(_first_snapshot(tmp_path), datetime.now(UTC)).encode("main", 0))
    monkeypatch.setattr(_bootstrap, "STALE_CREATION", 600.0)
    config = RepoConfig(new_id(), FORMAT_VERSION, datetime.now(UTC).isoformat())

    def other_creator_finishes() -> None:
        time.sleep(0.3)
        run(storage.put_if_absent("config.json", config.encode()))

    for how in ("create", "open_or_create"):
        _remove_config(tmp_path)
        finisher = threading.Thread(target=other_creator_finishes)
        finisher.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                if how == "create":
                    with pytest.raises(InvalidInputError, match="at the same time"):
                        Repository.create(storage)
                else:
                    assert Repository.open_or_create(storage).repo_id == config.repo_id
        finally:
            finisher.join(TIMEOUT)
    # the waiting creators removed the first snapshots they had written
    assert len([k for k in files(tmp_path) if k.startswith("snapshots/")]) == 1


def _remove_config(path: Path) -> None:
    """Remove the config.json written by a previous round."""
    (path / "config.json").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "another branch's entry", "missing snapshot", "deleted entry"],
)
def test_a_damaged_creation_is_repaired_at_once(tmp_path: Path, damage: str) -> None:
    now = datetime.now(UTC)  # fresh: no waiting, because it cannot be finished as it is
    good = _ref(_first_snapshot(tmp_path), now)
    data = {
        "garbage": b"not an object",
        "truncated": good.encode("main", 0)[:-5],
        "another branch's entry": good.encode("other", 0),
        "missing snapshot": _ref(new_id(), now).encode("main", 0),
        "deleted entry": BranchRef(None, None, "t", now.isoformat(), deleted=True).encode(
            "main", 0
        ),
    }[damage]
    _entry(tmp_path, 0, data)
    # (had it waited for the entry to be stale, it would say "finished it")
    with pytest.warns(RecoveryWarning, match="replaced its first entry of branch main"):
        repo = Repository.open_or_create(local_filesystem_storage(tmp_path))
    assert (tmp_path / branch_ref_key("main", 1)).exists()
    _works(repo)


def test_an_old_complete_creation_is_finished_with_the_callers_settings(tmp_path: Path) -> None:
    from icechunk_dask import RepositoryConfig

    _entry(
        tmp_path,
        0,
        _ref(_first_snapshot(tmp_path), datetime.now(UTC) - timedelta(hours=1)).encode("main", 0),
    )
    with pytest.warns(RecoveryWarning, match="finished it"):
        repo = Repository.create(
            local_filesystem_storage(tmp_path), RepositoryConfig(inline_chunk_threshold_bytes=7)
        )
    assert repo.config.inline_chunk_threshold_bytes == 7
    # our own first snapshot was not needed: only the abandoned creation's remains
    assert len([k for k in files(tmp_path) if k.startswith("snapshots/")]) == 1
    with pytest.raises(InvalidInputError, match="already exists"):
        Repository.create(local_filesystem_storage(tmp_path))
