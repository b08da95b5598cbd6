"""zarr's own store test-suite and state machines, run against SessionStore.

Nothing is overridden or skipped except ``test_serializable_store``: a writable
session pickles only on opt-in (see ``Session.allow_pickling``), so the
inherited test runs unchanged *inside* ``allow_pickling()``.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.stateful import ZarrHierarchyStateMachine, ZarrStoreStateMachine
from zarr.testing.store import StoreTests

from icechunk_dask import (
    PicklingNotAllowedError,
    Repository,
    Session,
    SessionStore,
    in_memory_storage,
    local_filesystem_storage,
)


@pytest.fixture(params=["memory", "local"])
def session(request: pytest.FixtureRequest, tmp_path: Any) -> Session:
    storage = (
        in_memory_storage() if request.param == "memory" else local_filesystem_storage(tmp_path)
    )
    return Repository.create(storage).writable_session("main")


class TestSessionStore(StoreTests[SessionStore, cpu.Buffer]):
    store_cls = SessionStore
    buffer_cls = cpu.Buffer

    async def set(self, store: SessionStore, key: str, value: Buffer) -> None:
        # bypass the store API: record straight into the session
        await store.session._workspace.write(key, value.to_bytes())

    async def get(self, store: SessionStore, key: str) -> Buffer:
        data = await store.session._workspace.read(key)
        assert data is not None
        return self.buffer_cls.from_bytes(data)

    @pytest.fixture
    def store_kwargs(self, session: Session) -> dict[str, Any]:
        return {"session": session}

    def test_store_repr(self, store: SessionStore) -> None:
        assert "SessionStore" in repr(store)
        assert str(store).startswith("icechunk-dask://")

    def test_store_supports_writes(self, store: SessionStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SessionStore) -> None:
        assert store.supports_listing

    async def test_serializable_store(self, store: SessionStore) -> None:
        # Adapted: pickling a writable session is opt-in. Outside allow_pickling() it raises;
        # inside, the inherited test runs as written.
        with pytest.raises(PicklingNotAllowedError, match="allow_pickling"):
            pickle.dumps(store)
        with store.session.allow_pickling():
            await super().test_serializable_store(store)


def test_readonly_store_pickles_freely() -> None:
    import zarr

    repo = Repository.create(in_memory_storage())
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w", zarr_format=3)
    session.commit("init")
    ro = repo.readonly_session(branch="main")
    copy = pickle.loads(pickle.dumps(ro.store))
    assert copy == ro.store
    assert copy.read_only
    assert sync_get(copy, "zarr.json") == sync_get(ro.store, "zarr.json")


def sync_get(store: SessionStore, key: str) -> bytes:
    from zarr.core.sync import sync

    buf = sync(store.get(key, default_buffer_prototype()))
    assert buf is not None
    return buf.to_bytes()


def test_zarr_store_state_machine() -> None:
    def make() -> ZarrStoreStateMachine:
        repo = Repository.create(in_memory_storage())
        return ZarrStoreStateMachine(repo.writable_session("main").store)  # type: ignore[no-untyped-call]

    run_state_machine_as_test(make, settings=settings(deadline=None, max_examples=50))


# zarr's own machine draws dtypes (e.g. fixed-width bytes) that zarr itself flags as unstable.
@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
def test_zarr_hierarchy_state_machine() -> None:
    def make() -> ZarrHierarchyStateMachine:
        repo = Repository.create(in_memory_storage())
        return ZarrHierarchyStateMachine(repo.writable_session("main").store)  # type: ignore[no-untyped-call]

    run_state_machine_as_test(make, settings=settings(deadline=None, max_examples=50))
