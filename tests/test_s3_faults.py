"""S3 storage with faults on the wire: a proxy in front of SeaweedFS.

The proxy (tests/fault_proxy.py) drops the response of a PUT that succeeded (a
lost acknowledgement), answers 503 SlowDown or 500, resets connections and
stalls response streams. The storage must retry what can be retried, report a
create-only write whose acknowledgement was lost as won (and a lost race as
lost), and turn everything else into a typed error that names the key.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository
from icechunk_dask._exceptions import NotFoundError, StorageError
from icechunk_dask.storage import S3Storage, s3_storage
from tests.fault_proxy import FaultProxy, fault_proxy

pytest_plugins = ["tests.servers.seaweed"]

pytestmark = pytest.mark.seaweedfs

#: Short budgets so that exhausted retries fail fast.
FAST = {
    "max_retries": 3,
    "retry_timeout": 60.0,
    "initial_backoff": 0.05,
    "max_backoff": 0.2,
    "request_timeout": 2.0,
}
REF = "refs/branch.main/00000001.json"


@pytest.fixture
def proxy(seaweed_bucket: dict[str, Any]) -> Iterator[FaultProxy]:
    with fault_proxy(seaweed_bucket["endpoint_url"]) as p:
        yield p


@pytest.fixture
def direct(seaweed_bucket: dict[str, Any]) -> S3Storage:
    """The same bucket without the proxy (to check what really landed)."""
    return s3_storage(**seaweed_bucket)


@pytest.fixture
def faulty(seaweed_bucket: dict[str, Any], proxy: FaultProxy) -> S3Storage:
    """The bucket through the proxy, with short retry budgets."""
    return s3_storage(**{**seaweed_bucket, "endpoint_url": proxy.endpoint}, **FAST)


# -- create-only writes -------------------------------------------------------------------


async def test_lost_ack_of_create_is_reported_as_won(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    proxy.add("drop_response", method="PUT", path_contains=REF)
    assert await faulty.put_if_absent(REF, b"mine")
    assert await direct.get(REF) == b"mine"
    assert [s.fault for s in proxy.requests("PUT", REF)] == ["drop_response"]
    assert proxy.requests("GET", REF)  # it read the key back


async def test_lost_race_with_lost_ack_is_still_lost(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    assert await direct.put_if_absent(REF, b"theirs")
    proxy.add("drop_response", method="PUT", path_contains=REF)  # drops the 412
    assert not await faulty.put_if_absent(REF, b"mine")
    assert await direct.get(REF) == b"theirs"


async def test_create_that_never_arrived_is_tried_again(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    proxy.add("reset", method="PUT", path_contains=REF)  # reset before forwarding
    assert await faulty.put_if_absent(REF, b"mine")
    assert await direct.get(REF) == b"mine"
    assert [s.fault for s in proxy.requests("PUT", REF)] == ["reset", None]


@pytest.mark.slow
async def test_create_with_stalled_response_is_read_back(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    proxy.add("stall", method="PUT", path_contains=REF, stall_seconds=10)
    assert await faulty.put_if_absent(REF, b"mine")
    assert await direct.get(REF) == b"mine"


@pytest.mark.parametrize("status", [503, 500])
async def test_create_retries_server_errors(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage, status: int
) -> None:
    proxy.add("status", method="PUT", path_contains=REF, status=status, times=2)
    assert await faulty.put_if_absent(REF, b"mine")
    assert not await faulty.put_if_absent(REF, b"other")
    assert await direct.get(REF) == b"mine"


# -- retries, backoff, timeouts -----------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500])
async def test_server_errors_are_retried_with_backoff(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy, direct: S3Storage, status: int
) -> None:
    backoff = 0.1
    faulty = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint},
        **{**FAST, "initial_backoff": backoff, "max_backoff": 0.2},
    )
    proxy.add("status", method="PUT", path_contains="chunks/a", status=status, times=3)
    await faulty.put("chunks/a", b"data")
    attempts = proxy.requests("PUT", "chunks/a")
    assert [s.fault for s in attempts] == ["status", "status", "status", None]
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    # every retry waited at least the initial backoff (a lower bound: sleeps never end early)
    assert min(gaps) >= backoff * 0.9, gaps
    assert await direct.get("chunks/a") == b"data"
    proxy.add("status", method="GET", path_contains="chunks/a", status=status, times=2)
    assert await faulty.get("chunks/a") == b"data"


async def test_reset_connections_are_retried(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    await direct.put("chunks/a", b"0123456789" * 100)
    for method in ("GET", "HEAD", "PUT"):
        proxy.add("reset", method=method, path_contains="chunks/a", times=2)
    assert await faulty.get_range("chunks/a", 10, 20) == b"0123456789" * 2
    assert await faulty.exists("chunks/a")
    await faulty.put("chunks/a", b"new")
    assert await direct.get("chunks/a") == b"new"
    proxy.add("reset", method="GET", path_contains="list-type", times=2)
    assert await faulty.list("chunks/") == ["chunks/a"]


@pytest.mark.slow
async def test_stalled_streams_time_out_and_are_retried(
    proxy: FaultProxy, faulty: S3Storage, direct: S3Storage
) -> None:
    body = bytes(range(256)) * 64
    await direct.put("chunks/big", body)
    proxy.add("stall", method="GET", path_contains="chunks/big", stall_seconds=30)
    assert await faulty.get("chunks/big") == body
    assert [s.fault for s in proxy.requests("GET", "chunks/big")] == ["stall", None]
    await asyncio.gather(*(direct.put(f"chunks/{i:02d}", b"x") for i in range(5)))
    proxy.add("stall", method="GET", path_contains="list-type", stall_seconds=30)
    assert sorted(await faulty.list("chunks/")) == sorted(
        ["chunks/big", *(f"chunks/{i:02d}" for i in range(5))]
    )
    assert [s.fault for s in proxy.requests("GET", "list-type")] == ["stall", None]


async def test_a_stalled_error_answer_after_server_errors_is_retried(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy
) -> None:
    # obstore retries the 5xx answers itself, then does not retry the 404 whose body stalls,
    # and reports "after 5 retries" of its 10: not a spent budget, so the storage tries again
    storage = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint},
        **{**FAST, "max_retries": 10, "request_timeout": 1.0},
    )
    proxy.add("status", status=503, method="GET", times=3)
    proxy.add("status", status=500, method="GET", times=2)
    proxy.add("stall", method="GET", times=1, stall_seconds=10)
    with pytest.raises(NotFoundError, match="refs/missing"):
        await storage.get("refs/missing")
    assert [s.fault for s in proxy.requests("GET", "refs/missing")] == [
        *["status"] * 5,
        "stall",
        None,
    ]


# -- exhausted retries: typed errors naming the key -------------------------------------------


async def test_exhausted_retries_raise_storage_error_with_the_key(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy, direct: S3Storage
) -> None:
    faulty = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint}, **{**FAST, "max_retries": 1}
    )
    await direct.put("chunks/a", b"x")
    proxy.add("status", status=503, times=10_000)
    calls = {
        "get": faulty.get("chunks/a"),
        "get_range": faulty.get_range("chunks/a", 0, 1),
        "put": faulty.put("chunks/b", b"x"),
        "put_if_absent": faulty.put_if_absent(REF, b"x"),
        "list": faulty.list("chunks/"),
        "delete": faulty.delete(["chunks/a"]),
        "exists": faulty.exists("chunks/a"),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            await call
        assert type(info.value) is StorageError, name
        key = REF if name == "put_if_absent" else "chunks/"
        assert key in str(info.value), (name, str(info.value))
        assert "503" in str(info.value) or "SlowDown" in str(info.value), str(info.value)
    proxy.rules.clear()
    with pytest.raises(NotFoundError, match="chunks/missing"):
        await faulty.get("chunks/missing")


async def test_exhausted_retries_on_reset_and_stall(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy
) -> None:
    storage = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint},
        **{**FAST, "max_retries": 1, "request_timeout": 0.5},
    )
    proxy.add("reset", times=10_000)
    with pytest.raises(StorageError, match="chunks/a"):
        await storage.put("chunks/a", b"x")
    with pytest.raises(StorageError, match="refs/x"):
        await storage.put_if_absent("refs/x", b"x")
    proxy.rules.clear()
    proxy.add("stall", times=10_000, stall_seconds=5)
    with pytest.raises(StorageError, match="chunks/a"):
        await storage.get("chunks/a")


# -- the concurrency limit ------------------------------------------------------------------


@pytest.mark.parametrize("limit", [3, 24])
async def test_concurrent_requests_are_limited(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy, limit: int
) -> None:
    storage = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint}, max_concurrent_requests=limit
    )
    # the stall keeps one request's slot busy while the others queue behind the limit
    await asyncio.gather(*(storage.put(f"chunks/{i:03d}", b"x" * 1000) for i in range(60)))
    assert proxy.max_in_flight <= limit
    if limit == 3:
        assert proxy.max_in_flight == 3
    else:
        assert proxy.max_in_flight > 3  # the limit, not the client, was the bottleneck


# -- through the public API ---------------------------------------------------------------------


def _commit_rows(repo: Repository, first: int, count: int) -> list[str]:
    ids = []
    for i in range(first, first + count):
        session = repo.writable_session("main")
        arr = zarr.open_array(session.store, path="a", mode="r+")
        arr[i] = np.full(4, float(i))
        ids.append(session.commit(f"row {i}"))
    return ids


@pytest.mark.slow
def test_commits_through_faults_land_exactly_once(
    seaweed_bucket: dict[str, Any], proxy: FaultProxy
) -> None:
    # the default retry budget, with short waits
    storage = s3_storage(
        **{**seaweed_bucket, "endpoint_url": proxy.endpoint},
        initial_backoff=0.05,
        max_backoff=0.2,
        request_timeout=2.0,
    )
    repo = Repository.create(storage)
    session = repo.writable_session("main")
    zarr.create_array(
        session.store, name="a", shape=(12, 4), chunks=(1, 4), dtype="f8", fill_value=np.nan
    )
    ids = [session.commit("create")]
    # the ref write of every commit loses its acknowledgement
    proxy.add("drop_response", method="PUT", path_contains="refs/branch.main/", times=3)
    ids += _commit_rows(repo, 0, 3)
    # server errors and resets on everything: chunks, manifests, snapshots, refs, reads
    proxy.add("status", status=503, times=3)
    proxy.add("status", status=500, times=3)
    proxy.add("reset", method="GET", times=3)
    proxy.add("stall", method="GET", path_contains="refs/", times=1, stall_seconds=10)
    ids += _commit_rows(repo, 3, 4)
    assert all(rule.times == 0 for rule in proxy.rules)  # every fault was hit
    fresh = Repository.open(s3_storage(**seaweed_bucket))
    history = list(fresh.ancestry(branch="main"))
    assert [i.message for i in history][:-1] == [f"row {i}" for i in reversed(range(7))] + [
        "create"
    ]
    assert [i.id for i in history][: len(ids)] == list(reversed(ids))
    out = zarr.open_array(fresh.readonly_session(branch="main").store, path="a", mode="r")[:]
    expected = np.full((12, 4), np.nan)
    expected[:7] = np.arange(7)[:, None]
    np.testing.assert_array_equal(out, expected)
