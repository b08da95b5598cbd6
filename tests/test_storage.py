"""The storage contract, run against local filesystem, in-memory and S3 storage.

S3 runs twice: on moto (semantics) and on SeaweedFS (a real server whose create-only
PUT is atomic, so the concurrency tests mean something there).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icechunk_dask._exceptions import (
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from icechunk_dask.storage import (
    FaultyStorage,
    InMemoryStorage,
    LocalFileSystemStorage,
    Storage,
    azure_storage,
    in_memory_storage,
    local_filesystem_storage,
    s3_storage,
)

pytest_plugins = ["tests.servers.azurite", "tests.servers.seaweed"]

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    pytest.param("azurite", marks=pytest.mark.azurite),
]

LIST_KEYS = [
    "config.json",
    "refs/branch.main/00000001.json",
    "refs/branch.main/00000002.json",
    "refs/branch.dev/00000001.json",
    "refs/tag.v1.json",
    "chunks/abc",
    "chunks/abd",
    "chunks/b",
    "a/b/c/d/e",
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return in_memory_storage()
    if request.param == "local":
        return local_filesystem_storage(tmp_path / "repo")
    if request.param == "azurite":
        return azure_storage(**request.getfixturevalue("azurite_container"))
    fixture = "seaweed_bucket" if request.param == "seaweedfs" else "s3_bucket"
    kwargs: dict[str, Any] = request.getfixturevalue(fixture)
    return s3_storage(**kwargs)


@pytest.fixture(scope="module")
def spawn_pool() -> Iterator[Pool]:
    """Worker processes started with 'spawn' (nothing inherited from this process)."""
    pool = multiprocessing.get_context("spawn").Pool(8)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


# -- helpers that run in spawned child processes (module level: picklable) -------------


def _unpickle_and_read(blob: bytes, key: str) -> tuple[str, str]:
    try:
        storage = pickle.loads(blob)
        return ("ok", asyncio.run(storage.get(key)).decode())
    except (ValueError, KeyError, OSError) as e:  # every icechunk_dask storage error
        return (type(e).__name__, str(e))


def _race_put_if_absent(root: str, key: str, token: str, start_at: float) -> bool:
    storage = local_filesystem_storage(root)
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(storage.put_if_absent(key, token.encode()))


# -- the contract -----------------------------------------------------------------------


async def test_put_get_overwrite(storage: Storage) -> None:
    await storage.put("a/b/c", b"hello")
    assert await storage.get("a/b/c") == b"hello"
    await storage.put("a/b/c", b"replaced")
    assert await storage.get("a/b/c") == b"replaced"
    await storage.put("empty", b"")
    assert await storage.get("empty") == b""
    big = os.urandom(256 * 1024)
    await storage.put("big", big)
    assert await storage.get("big") == big


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, 10, bytes(range(10))),
        (0, None, bytes(range(100))),
        (90, None, bytes(range(90, 100))),
        (95, 10, bytes(range(95, 100))),
        (10, 0, b""),
        (99, None, bytes([99])),
        (100, None, b""),
        (100, 5, b""),
        (150, None, b""),
        (150, 5, b""),
    ],
)
async def test_get_range(storage: Storage, start: int, length: int | None, expected: bytes) -> None:
    await storage.put("obj", bytes(range(100)))
    assert await storage.get_range("obj", start, length) == expected


async def test_missing_key_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="nope/missing") as info:
        await storage.get("nope/missing")
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        await storage.get_range("nope/missing", 0, 4)
    with pytest.raises(NotFoundError):
        await storage.get_range("nope/missing", 0, None)
    with pytest.raises(NotFoundError):
        await storage.get_range("nope/missing", 0, 0)
    assert not await storage.exists("nope/missing")


async def test_exists(storage: Storage) -> None:
    await storage.put("dir/file", b"x")
    assert await storage.exists("dir/file")
    assert not await storage.exists("dir/fil")
    assert not await storage.exists("dir/file2")


async def test_put_if_absent(storage: Storage) -> None:
    assert await storage.put_if_absent("refs/branch.main/00000001.json", b"first")
    assert not await storage.put_if_absent("refs/branch.main/00000001.json", b"second")
    assert await storage.get("refs/branch.main/00000001.json") == b"first"
    assert await storage.put_if_absent("refs/branch.main/00000002.json", b"second")


async def _s3_race(storage: Storage, key: str, tokens: list[bytes]) -> list[bool]:
    return list(await asyncio.gather(*(storage.put_if_absent(key, t) for t in tokens)))


def _thread_race(storage: Storage, key: str, tokens: list[bytes]) -> list[bool]:
    results: list[bool | None] = [None] * len(tokens)
    barrier = threading.Barrier(len(tokens))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = asyncio.run(storage.put_if_absent(key, tokens[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in results)
    return [bool(r) for r in results]


def test_concurrent_put_if_absent_has_one_winner(
    storage: Storage, request: pytest.FixtureRequest
) -> None:
    # SeaweedFS makes each loser of a create-only race wait ~1 s for its object lock:
    # one round here, more in tests/test_s3_seaweed.py.
    backend = request.node.callspec.params["storage"]
    rounds = {"seaweedfs": 1, "s3": 4, "azurite": 4}.get(backend, 8)
    writers = 8 if backend == "seaweedfs" else 16
    for r in range(rounds):
        key = f"refs/branch.main/{r:08d}.json"
        tokens = [f"writer {i} {uuid.uuid4().hex}".encode() for i in range(writers)]
        if backend in ("s3", "seaweedfs", "azurite"):  # one event loop, concurrent requests
            wins = asyncio.run(_s3_race(storage, key, tokens))
        else:
            wins = _thread_race(storage, key, tokens)
        assert wins.count(True) == 1, f"round {r}: {wins.count(True)} winners"
        winner = tokens[wins.index(True)]
        assert asyncio.run(storage.get(key)) == winner


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", LIST_KEYS),
        ("refs/", [k for k in LIST_KEYS if k.startswith("refs/")]),
        ("refs", [k for k in LIST_KEYS if k.startswith("refs/")]),
        ("refs/branch.", [k for k in LIST_KEYS if k.startswith("refs/branch.")]),
        ("refs/branch.mai", [k for k in LIST_KEYS if k.startswith("refs/branch.main/")]),
        ("refs/branch.main/", [k for k in LIST_KEYS if k.startswith("refs/branch.main/")]),
        ("chunks/ab", ["chunks/abc", "chunks/abd"]),
        ("chunks/abc", ["chunks/abc"]),
        ("conf", ["config.json"]),
        ("a/b/", ["a/b/c/d/e"]),
        ("missing/", []),
        ("zzz", []),
    ],
)
async def test_list(storage: Storage, prefix: str, expected: list[str]) -> None:
    for k in LIST_KEYS:
        await storage.put(k, k.encode())
    assert sorted(await storage.list(prefix)) == sorted(expected)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", LIST_KEYS),
        ("refs/branch.mai", [k for k in LIST_KEYS if k.startswith("refs/branch.main/")]),
        ("chunks/", ["chunks/abc", "chunks/abd", "chunks/b"]),
        ("zzz", []),
    ],
)
async def test_list_objects(storage: Storage, prefix: str, expected: list[str]) -> None:
    start = datetime.now(UTC)
    for k in LIST_KEYS:
        await storage.put(k, k.encode() * 3)
    infos = [info async for info in storage.list_objects(prefix)]
    assert sorted(i.key for i in infos) == sorted(expected)
    for info in infos:
        assert info.size == 3 * len(info.key.encode())
        assert info.last_modified.tzinfo is not None
        # server clocks round to seconds; allow generous skew, no upper wall-clock bound
        assert info.last_modified >= start - timedelta(minutes=5)


@pytest.mark.parametrize("prefix", ["", "chunks/", "zzz"])
async def test_object_pages_hold_what_list_objects_yields(storage: Storage, prefix: str) -> None:
    for k in LIST_KEYS:
        await storage.put(k, k.encode() * 3)
    infos = {info.key: info async for info in storage.list_objects(prefix)}
    pages = [page async for page in storage.list_object_pages(prefix)]
    assert sorted(k for page in pages for k in page.keys) == sorted(infos)
    for page in pages:
        assert len(page) == len(page.sizes) == len(page.mtimes) > 0
        assert page.sizes.dtype == np.int64 and page.mtimes.dtype == np.float64
        for key, size, mtime in zip(page.keys, page.sizes, page.mtimes, strict=True):
            assert size == infos[key].size == 3 * len(key.encode())
            # a datetime holds microseconds: the page's float is at most half of one away
            assert abs(mtime - infos[key].last_modified.timestamp()) <= 0.5e-6


async def test_list_objects_streams_many_pages(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("icechunk_dask.storage._obstore._LIST_CHUNK", 7)
    keys = [f"chunks/{i:03d}" for i in range(40)]
    await asyncio.gather(*(storage.put(k, b"x") for k in [*keys, "other/1"]))
    stream = storage.list_objects("chunks/")
    first = await anext(stream)
    rest = [info.key async for info in stream]
    assert sorted([first.key, *rest]) == keys


async def test_delete_is_idempotent(storage: Storage) -> None:
    keys = [f"chunks/{i:03d}" for i in range(30)]
    for k in [*keys, "keep"]:
        await storage.put(k, b"x")
    await storage.delete(k for k in [*keys[:10], "never/existed"])
    assert sorted(await storage.list("chunks/")) == keys[10:]
    await storage.delete(keys)
    await storage.delete(keys)
    await storage.delete([])
    assert await storage.list("chunks/") == []
    assert await storage.list("") == ["keep"]
    with pytest.raises(NotFoundError):
        await storage.get(keys[0])


async def test_pickle_round_trip(storage: Storage) -> None:
    await storage.put("k", b"v")
    clone = pickle.loads(pickle.dumps(storage))
    assert type(clone) is type(storage)
    assert clone == storage
    assert hash(clone) == hash(storage)
    assert clone.url == storage.url
    assert await clone.get("k") == b"v"
    await clone.put("k2", b"v2")
    assert await storage.get("k2") == b"v2"


async def test_durability_barrier_and_check_usable(storage: Storage) -> None:
    await storage.put("k", b"v")
    await storage.durability_barrier()
    storage.check_usable()


# -- in-memory specifics ------------------------------------------------------------------


async def test_memory_unpickled_in_same_process_shares_data() -> None:
    storage = in_memory_storage()
    assert storage.process_local
    await storage.put("k", b"v")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone is storage


def test_memory_unpickled_in_other_process_fails(spawn_pool: Pool) -> None:
    storage = in_memory_storage()
    asyncio.run(storage.put("k", b"v"))
    kind, message = spawn_pool.apply(_unpickle_and_read, (pickle.dumps(storage), "k"))
    assert kind == "InvalidInputError"
    assert "local_filesystem_storage" in message


# -- local filesystem specifics -------------------------------------------------------------


def test_local_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "afile"
    path.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="not a directory"):
        local_filesystem_storage(path)


async def test_local_leaves_no_temp_files(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    for i in range(5):
        await storage.put(f"chunks/{i}", b"data")
        await storage.put(f"chunks/{i}", b"data again")
    assert await storage.put_if_absent("refs/branch.main/1.json", b"a")
    assert not await storage.put_if_absent("refs/branch.main/1.json", b"b")
    await storage.durability_barrier()
    names = [n for _, _, files in os.walk(tmp_path / "repo") for n in files]
    assert len(names) == 6
    assert not [n for n in names if n.startswith(".tmp")]


def test_local_put_if_absent_across_processes(tmp_path: Path, spawn_pool: Pool) -> None:
    root = str(tmp_path / "repo")
    for r in range(4):
        key = f"refs/branch.main/{r:08d}.json"
        start_at = time.time() + 0.3
        tokens = [f"process {i} {uuid.uuid4().hex}" for i in range(8)]
        wins = spawn_pool.starmap(
            _race_put_if_absent, [(root, key, t, start_at) for t in tokens], chunksize=1
        )
        assert wins.count(True) == 1, f"round {r}: {wins.count(True)} winners"
        stored = asyncio.run(local_filesystem_storage(root).get(key))
        assert stored == tokens[wins.index(True)].encode()


def test_local_pickles_by_path(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, LocalFileSystemStorage)
    assert clone.root == storage.root


# -- FaultyStorage ---------------------------------------------------------------------------


async def test_faulty_nth_call_fails_others_pass() -> None:
    inner = in_memory_storage()
    faulty = FaultyStorage(inner, fail_on={"put": 2, "get": [1, 3]})
    await faulty.put("a", b"1")
    with pytest.raises(StorageError, match="call 2 of put"):
        await faulty.put("b", b"2")
    await faulty.put("c", b"3")
    assert not await inner.exists("b")
    with pytest.raises(StorageError):
        await faulty.get("a")
    assert await faulty.get("a") == b"1"
    with pytest.raises(StorageError):
        await faulty.get("c")
    assert await faulty.get("c") == b"3"
    assert sorted(await faulty.list("")) == ["a", "c"]
    assert faulty.calls == {"put": 3, "get": 4, "list": 1}
    assert faulty.injected == [("put", 2, "b"), ("get", 1, "a"), ("get", 3, "c")]
    faulty.reset()
    assert faulty.calls == {}
    assert faulty.injected == []
    with pytest.raises(StorageError):
        await faulty.get("a")


async def test_faulty_custom_error() -> None:
    faulty = FaultyStorage(
        in_memory_storage(), fail_on={"list": 1, "exists": 1}, error=TimeoutError
    )
    with pytest.raises(TimeoutError, match="injected failure"):
        await faulty.list("")
    boom = ConnectionResetError("reset by peer")
    faulty = FaultyStorage(in_memory_storage(), fail_on={"delete": 1}, error=boom)
    with pytest.raises(ConnectionResetError) as info:
        await faulty.delete(["x"])
    assert info.value is boom


async def test_faulty_delay() -> None:
    faulty = FaultyStorage(in_memory_storage(), delay={"get": 0.05})
    await faulty.put("k", b"v")
    t0 = time.perf_counter()
    assert await faulty.get("k") == b"v"
    assert time.perf_counter() - t0 >= 0.045


async def test_faulty_lost_acknowledgement_applies_then_raises() -> None:
    inner = in_memory_storage()
    faulty = FaultyStorage(
        inner,
        fail_on={"put_if_absent": 1, "put": 1},
        fail_after_apply={"put_if_absent"},
    )
    with pytest.raises(StorageError):
        await faulty.put_if_absent("refs/branch.main/1.json", b"mine")
    assert await inner.get("refs/branch.main/1.json") == b"mine"
    with pytest.raises(StorageError):
        await faulty.put("chunk", b"x")
    assert not await inner.exists("chunk")  # not in fail_after_apply: never applied


def test_faulty_rejects_unknown_operations() -> None:
    with pytest.raises(InvalidInputError, match="gett"):
        FaultyStorage(in_memory_storage(), fail_on={"gett": 1})


def test_faulty_counts_thread_safely() -> None:
    faulty = FaultyStorage(in_memory_storage())

    def work(i: int) -> None:
        async def many() -> None:
            for j in range(50):
                await faulty.put(f"{i}/{j}", b"")

        asyncio.run(many())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert faulty.calls == {"put": 400}


async def test_faulty_pickles_with_inner(tmp_path: Path) -> None:
    local = FaultyStorage(local_filesystem_storage(tmp_path / "repo"), fail_on={"get": 2})
    await local.put("k", b"v")
    clone = pickle.loads(pickle.dumps(local))
    assert clone.calls == {"put": 1}
    assert await clone.get("k") == b"v"
    with pytest.raises(StorageError):
        await clone.get("k")
    memory = FaultyStorage(in_memory_storage())
    assert memory.process_local
    assert isinstance(pickle.loads(pickle.dumps(memory)).inner, InMemoryStorage)

    class Unpicklable(InMemoryStorage):
        def __reduce__(self) -> tuple[Any, ...]:
            raise TypeError("cannot pickle this storage")

    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(FaultyStorage(Unpicklable()))


# -- S3 specifics ----------------------------------------------------------------------------


@pytest.mark.s3
async def test_s3_put_if_absent_reads_back_after_lost_ack(s3_bucket: dict[str, Any]) -> None:
    storage = s3_storage(**s3_bucket)
    body = b'{"snapshot": "abc", "token": "6f1c"}'
    assert await storage.put_if_absent("refs/branch.main/1.json", body)
    # a retried create whose first attempt landed: identical bytes -> our write
    assert await storage.put_if_absent("refs/branch.main/1.json", body)
    # someone else's write: different bytes -> lost
    assert not await storage.put_if_absent("refs/branch.main/1.json", body + b" ")
    assert await storage.get("refs/branch.main/1.json") == body


@pytest.mark.s3
async def test_s3_prefixes_are_isolated(s3_bucket: dict[str, Any]) -> None:
    one = s3_storage(**{**s3_bucket, "prefix": "repos/one/"})
    two = s3_storage(**{**s3_bucket, "prefix": "/repos/two"})
    root = s3_storage(**s3_bucket)
    await one.put("config.json", b"1")
    await two.put("config.json", b"2")
    assert await one.list("") == ["config.json"]
    assert await one.get("config.json") == b"1"
    assert sorted(await root.list("repos/")) == ["repos/one/config.json", "repos/two/config.json"]
    assert one.url.endswith("/repos/one")
    assert one != two


@pytest.mark.s3
async def test_s3_unpickled_in_other_process(s3_bucket: dict[str, Any], spawn_pool: Pool) -> None:
    storage = s3_storage(**s3_bucket)
    await storage.put("k", b"from parent")
    blob = pickle.dumps(storage)
    assert b"obstore" not in blob  # settings only, the client is rebuilt lazily
    result = await asyncio.to_thread(spawn_pool.apply, _unpickle_and_read, (blob, "k"))
    assert result == ("ok", "from parent")


@pytest.mark.s3
async def test_s3_errors(s3_bucket: dict[str, Any]) -> None:
    storage = s3_storage(**s3_bucket)
    with pytest.raises(InvalidInputError, match="a//b"):
        await storage.put("a//b", b"x")
    missing = s3_storage(**{**s3_bucket, "bucket": f"missing-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StorageError, match="does not exist"):
        await missing.put("k", b"x")
    with pytest.raises(StorageError, match="does not exist"):
        await missing.get("k")


def test_s3_storage_validates_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)  # it would allow http:// endpoints
    with pytest.raises(InvalidInputError, match="bucket"):
        s3_storage(bucket="")
    with pytest.raises(InvalidInputError, match="prefix"):
        s3_storage(bucket="b/sub")
    with pytest.raises(InvalidInputError, match="secret_access_key"):
        s3_storage(bucket="b", access_key_id="x")
    with pytest.raises(InvalidInputError, match="one credential source"):
        s3_storage(bucket="b", anonymous=True, from_env=True)
    with pytest.raises(InvalidInputError, match="allow_http"):
        s3_storage(bucket="b", endpoint_url="http://127.0.0.1:1")
    storage = s3_storage(bucket="b", access_key_id="AK", secret_access_key="SECRET")
    assert "SECRET" not in repr(storage)
    assert storage.url == "s3://b"


def test_s3_without_obstore_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = s3_storage(bucket="b", access_key_id="AK", secret_access_key="SK")
    monkeypatch.setitem(sys.modules, "obstore", None)
    with pytest.raises(ImportError, match=r"pip install icechunk-dask\[s3\]"):
        storage.check_usable()


def test_storage_package_does_not_import_obstore() -> None:
    code = "import sys, icechunk_dask.storage; sys.exit('obstore' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.s3
async def test_s3_delete_in_batches(
    s3_bucket: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("icechunk_dask.storage._obstore._DELETE_BATCH", 7)
    storage = s3_storage(**s3_bucket)
    keys = [f"chunks/{i:03d}" for i in range(30)]
    await asyncio.gather(*(storage.put(k, b"x") for k in keys))
    await storage.delete([*keys[:20], "chunks/missing"])
    assert sorted(await storage.list("chunks/")) == keys[20:]
