"""Reading an inner chunk of a big shard reads (and verifies) only the blocks it needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest

from icechunk_dask import CorruptObjectError, Repository, local_filesystem_storage
from icechunk_dask._chunkio import BLOCK_BITS
from icechunk_dask._sync import run

N = 1 << 20  # one shard of 8 MiB (float64), 128 inner chunks of 64 KiB
INNER = 8192


class _CountingReads:
    """Bytes read from chunk objects (wraps the storage's range reads)."""

    def __init__(self, repo: Repository) -> None:
        self.bytes = 0
        storage = repo.storage
        get_range, get_range_then = storage.get_range, storage.get_range_then

        async def counted(key: str, start: int, length: int | None) -> bytes:
            data = await get_range(key, start, length)
            if key.startswith("chunks/"):
                self.bytes += len(data)
            return data

        async def counted_then(key: str, start: int, length: int | None, then):  # type: ignore[no-untyped-def]
            def count(data: bytes):  # type: ignore[no-untyped-def]
                if key.startswith("chunks/"):
                    self.bytes += len(data)
                return then(data)

            return await get_range_then(key, start, length, count)

        storage.get_range = counted  # type: ignore[method-assign]
        storage.get_range_then = counted_then  # type: ignore[method-assign]


@pytest.fixture
def sharded(tmp_path: Path) -> tuple[Repository, np.ndarray]:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="a", shape=(N,), chunks=(INNER,), shards=(N,), dtype="f8", compressors=None
    )
    values = np.arange(N, dtype="f8")
    arr[:] = values
    s.commit("one 8 MiB shard")
    return Repository.open(repo.storage), values  # a fresh handle: nothing cached


def _shard_object(repo: Repository) -> Path:
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    (mid,) = snap.nodes["a"].manifest_ids()
    (ref,) = run(repo._assets.get_manifest(mid)).values()
    assert ref is not None and isinstance(ref[0], str)
    assert ref[0].endswith(f".b{BLOCK_BITS}")  # stored blocked
    return Path(repo.storage.root) / "chunks" / ref[0]  # type: ignore[attr-defined]


def test_an_inner_chunk_reads_a_few_blocks_not_the_shard(
    sharded: tuple[Repository, np.ndarray],
) -> None:
    repo, values = sharded
    counter = _CountingReads(repo)
    arr = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(arr[INNER * 5 : INNER * 6], values[INNER * 5 : INNER * 6])
    block = 1 << BLOCK_BITS
    # the shard index (in the last block), one block for the inner chunk, the checksums
    assert counter.bytes <= 3 * block + 8 * (N * 8 // block)
    assert counter.bytes < N * 8 // 8


def test_damage_is_found_in_the_blocks_read_and_only_there(
    sharded: tuple[Repository, np.ndarray],
) -> None:
    repo, values = sharded
    path = _shard_object(repo)
    raw = bytearray(path.read_bytes())
    damaged_at = 100 * INNER * 8 + 17  # inside inner chunk 100
    raw[damaged_at] ^= 0xFF
    path.write_bytes(bytes(raw))
    arr = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(arr[:INNER], values[:INNER])  # far from the damage
    assert "fails its checksum in block" in _corruption(lambda: arr[100 * INNER : 101 * INNER])
    assert "fails its checksum" in _corruption(lambda: arr[:])  # a whole read checks it all


def _corruption(read: Callable[[], object]) -> str:
    """The CorruptObjectError a read raises (zarr may wrap it in an ExceptionGroup)."""
    try:
        read()
    except CorruptObjectError as e:
        return str(e)
    except ExceptionGroup as group:
        match, _ = group.split(CorruptObjectError)
        assert match is not None, group  # noqa: PT017 - zarr groups the read errors
        return str(match.exceptions[0])
    raise AssertionError("no error: damaged bytes were returned")


def _chunk_object(repo: Repository, name: str) -> tuple[Path, int]:
    """The object of the only chunk of array ``name``, and the chunk's length."""
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    (mid,) = snap.nodes[name].manifest_ids()
    (ref,) = run(repo._assets.get_manifest(mid)).values()
    assert ref is not None and isinstance(ref[0], str)
    return Path(repo.storage.root) / "chunks" / ref[0], ref[2]  # type: ignore[attr-defined]


def test_whole_reads_of_blocked_chunks_skip_the_checksums(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    s = repo.writable_session("main")
    values = np.random.default_rng(0).random(300_000)
    arr = zarr.create_array(
        s.store, name="b", shape=values.shape, chunks=(30_000,), shards=values.shape, dtype="f8"
    )
    arr[:] = values
    s.commit("one 2.4 MB shard")
    path, length = _chunk_object(repo, "b")
    assert path.name.endswith(f".b{BLOCK_BITS}")
    assert path.stat().st_size == length + 8 * -(-length // (1 << BLOCK_BITS))  # the trailer
    back = zarr.open_array(Repository.open(repo.storage).readonly_session("main").store, path="b")
    np.testing.assert_array_equal(back[:], values)
    np.testing.assert_array_equal(back[1000:2000], values[1000:2000])


@pytest.mark.parametrize(("size", "name"), [(1 << 20, "g/c"), (1 << 22, "c"), (1 << 22, "")])
def test_a_big_chunk_of_an_unsharded_array_is_stored_as_its_bytes_alone(
    tmp_path: Path, size: int, name: str
) -> None:
    # zarr reads such a chunk whole, so no block checksums: a chunk of exactly 4 MiB stays one
    # 4 MiB object (stores that split objects in 4 MiB pieces, as SeaweedFS does, would
    # otherwise write a second piece for the trailer)
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    s = repo.writable_session("main")
    values = np.random.default_rng(1).random(size // 8)
    arr = zarr.create_array(
        s.store, name=name, shape=values.shape, chunks=values.shape, dtype="f8", compressors=None
    )
    arr[:] = values
    s.commit("one chunk")
    path, length = _chunk_object(repo, name)
    assert length == size
    assert not path.name.endswith(f".b{BLOCK_BITS}")
    assert path.stat().st_size == size
    fresh = Repository.open(repo.storage)
    back = zarr.open_array(fresh.readonly_session("main").store, path=name)
    np.testing.assert_array_equal(back[:], values)
    # damage is still found: the whole-chunk checksum
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 8)
    again = zarr.open_array(Repository.open(repo.storage).readonly_session("main").store, path=name)
    assert "checksum" in _corruption(lambda: again[:])


def test_a_big_value_under_no_array_is_stored_blocked(tmp_path: Path) -> None:
    # no metadata says how it is read, so its ranges stay verifiable without a whole read
    from zarr.core.buffer import default_buffer_prototype

    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    s = repo.writable_session("main")
    blob = np.random.default_rng(2).bytes(3 << 19)
    run(s.store.set("raw/blob", default_buffer_prototype().buffer.from_bytes(blob)))
    s.commit("a blob")
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    refs = {
        k: r
        for nm in snap.nodes.values()
        for mid in nm.manifest_ids()
        for k, r in run(repo._assets.get_manifest(mid)).items()
    }
    (ref,) = refs.values()
    assert ref is not None and isinstance(ref[0], str) and ref[0].endswith(f".b{BLOCK_BITS}")
    store = Repository.open(repo.storage).readonly_session("main").store
    part = run(store.get("raw/blob", default_buffer_prototype(), RangeByteRequest(1000, 5000)))
    assert part is not None and part.to_bytes() == blob[1000:5000]
