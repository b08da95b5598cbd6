"""Azure Blob Storage on a real Azurite server: credentials, create-only races,
lost acknowledgements, and a repository through the public API.

The storage contract also runs on Azurite (tests/test_storage.py, backend ``azurite``).
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import uuid
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository
from icechunk_dask._exceptions import InvalidInputError, StorageError
from icechunk_dask.storage import AzureStorage, azure_storage
from tests.fault_proxy import fault_proxy

pytest_plugins = ["tests.servers.azurite"]

pytestmark = pytest.mark.azurite

REF = "refs/branch.main/00000001.json"


async def test_server_accepts_only_its_key(azurite_container: dict[str, Any]) -> None:
    await azure_storage(**azurite_container).put("k", b"v")
    bad = azure_storage(**{**azurite_container, "account_key": "AAAA" * 22})
    with pytest.raises(StorageError, match="'k'"):
        await bad.get("k")


async def test_missing_container_is_a_clear_error(azurite_container: dict[str, Any]) -> None:
    missing = azure_storage(**{**azurite_container, "container": f"nope-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StorageError, match=r"container .* does not exist"):
        await missing.put("k", b"x")


def test_create_only_race_threads_by_keys(azurite_container: dict[str, Any]) -> None:
    """8 threads each create the same 16 keys at once: exactly one winner per key."""
    threads, keys = 8, [f"refs/branch.main/{k:08d}.json" for k in range(16)]
    storage = azure_storage(**azurite_container)
    tokens = {(t, k): f"{t} {k} {uuid.uuid4().hex}".encode() for t in range(threads) for k in keys}
    won: dict[tuple[int, str], bool] = {}
    barrier = threading.Barrier(threads)

    def run(t: int) -> None:
        async def all_keys() -> list[bool]:
            return list(
                await asyncio.gather(*(storage.put_if_absent(k, tokens[t, k]) for k in keys))
            )

        barrier.wait()
        won.update(zip(((t, k) for k in keys), asyncio.run(all_keys()), strict=True))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert len(won) == threads * len(keys)
    for key in keys:
        winners = [t for t in range(threads) if won[t, key]]
        assert len(winners) == 1, f"{key}: winners {winners}"
        assert asyncio.run(storage.get(key)) == tokens[winners[0], key]


async def test_lost_ack_is_read_back(azurite_container: dict[str, Any]) -> None:
    direct = azure_storage(**azurite_container)
    endpoint, account = azurite_container["endpoint_url"].rsplit("/", 1)
    with fault_proxy(endpoint) as proxy:
        faulty = azure_storage(
            **{**azurite_container, "endpoint_url": f"{proxy.endpoint}/{account}"},
            max_retries=3,
            initial_backoff=0.05,
            max_backoff=0.2,
        )
        proxy.add("drop_response", method="PUT", path_contains=REF)
        assert await faulty.put_if_absent(REF, b"mine")
        proxy.add("drop_response", method="PUT", path_contains=REF)
        assert not await faulty.put_if_absent(REF, b"theirs")
        proxy.add("status", method="GET", status=503, times=2)
        assert await faulty.get(REF) == b"mine"
    assert await direct.get(REF) == b"mine"


def test_repository_on_azure(azurite_container: dict[str, Any]) -> None:
    repo = Repository.create(azure_storage(prefix="repo", **azurite_container))
    session = repo.writable_session("main")
    arr = zarr.create_array(
        session.store, name="a", shape=(8, 8), chunks=(4, 4), dtype="f8", fill_value=np.nan
    )
    arr[:] = 3.0
    first = session.commit("on azure")
    s1, s2 = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(s1.store, path="a", mode="r+")[:4, :4] = 1.0
    zarr.open_array(s2.store, path="a", mode="r+")[4:, 4:] = 2.0
    s1.commit("one")
    s2.commit("two (rebased)")
    fresh = Repository.open(azure_storage(prefix="repo", **azurite_container))
    assert [i.message for i in fresh.ancestry(branch="main")][:3] == [
        "two (rebased)",
        "one",
        "on azure",
    ]
    assert list(fresh.ancestry(branch="main"))[2].id == first
    expected = np.full((8, 8), 3.0)
    expected[:4, :4], expected[4:, 4:] = 1.0, 2.0
    out = zarr.open_array(fresh.readonly_session(branch="main").store, path="a", mode="r")[:]
    np.testing.assert_array_equal(out, expected)


def test_azure_storage_validates_and_pickles_without_secrets() -> None:
    with pytest.raises(InvalidInputError, match="container"):
        azure_storage(container="")
    with pytest.raises(InvalidInputError, match="one credential source"):
        azure_storage(container="c", account_key="k", sas_token="s")
    with pytest.raises(InvalidInputError, match="allow_http"):
        azure_storage(container="c", endpoint_url="http://127.0.0.1:1/acct")
    storage = azure_storage(container="c", prefix="/p/", account_name="acct")
    assert storage.url == "az://c/p"
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, AzureStorage) and clone == storage
    keyed = azure_storage(container="c", account_name="acct", account_key="SECRETKEY")
    assert "SECRETKEY" not in repr(keyed)
