"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Zstd

from icechunk_dask import (
    Repository,
    RepositoryConfig,
    Session,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask.storage import Storage


def new_repo(path: Path) -> Repository:
    """A fresh repository on local disk."""
    return Repository.create(local_filesystem_storage(path))


def memory_repo_with_array() -> Repository:
    """An in-memory repository whose ``main`` holds array ``a``: 4 int32, chunks of 2, fill 0."""
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    s.commit("base")
    return repo


def make_array(
    session: Session,
    name: str = "a",
    shape: tuple[int, ...] = (8, 8),
    chunks: tuple[int, ...] = (4, 4),
) -> zarr.Array:
    """Create a float64 array with no compression (so bytes on disk are predictable)."""
    return zarr.create_array(
        session.store,
        name=name,
        shape=shape,
        chunks=chunks,
        dtype="f8",
        fill_value=np.nan,
        compressors=None,
        zarr_format=3,
        overwrite=True,
    )


def read_array(session: Session, name: str = "a") -> np.ndarray:
    """Read a whole array through a session."""
    return np.asarray(zarr.open_array(session.store, path=name, mode="r")[...])


_PREFIX = struct.Struct("<4sBBHIQI")  # magic, format, kind, flags, header_len, body_len, crc


def as_format(data: bytes, version: int) -> bytes:
    """The same envelope as written by format ``version`` (valid checksum).

    Before format 3 a compressed body is zlib's (flag bit 0), not Zstandard's (bit 1).
    """
    magic, _, kind, flags, hlen, _, _ = _PREFIX.unpack_from(data)
    head, body = data[_PREFIX.size : _PREFIX.size + hlen], data[_PREFIX.size + hlen :]
    if version < 3 and flags & 2:
        body, flags = zlib.compress(Zstd().decode(body), 1), (flags & ~2) | 1
    prefix = _PREFIX.pack(magic, version, kind, flags, hlen, len(body), 0)[:-4]
    crc = zlib.crc32(body, zlib.crc32(head, zlib.crc32(prefix)))
    return prefix + crc.to_bytes(4, "little") + head + body


class CountingReads:
    """The keys a storage object is asked to read, in order (wraps its ``get`` and ``get_range``)."""

    def __init__(self, storage: Storage) -> None:
        self.reads: list[str] = []
        get, get_range = storage.get, storage.get_range

        async def counted_get(key: str) -> bytes:
            self.reads.append(key)
            return await get(key)

        async def counted_range(key: str, start: int, length: int | None) -> bytes:
            self.reads.append(key)
            return await get_range(key, start, length)

        storage.get = counted_get  # type: ignore[method-assign]
        storage.get_range = counted_range  # type: ignore[method-assign]
