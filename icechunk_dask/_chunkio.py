"""Chunk objects: how chunk bytes are stored and read back verified.

A chunk object holds the chunk's bytes exactly as zarr encoded them. Every
reference carries the XXH3 checksum of the whole chunk, checked on every
whole read. Byte ranges (zarr reads the inner chunks of a shard that way)
are verified too, without reading the whole object:

* a chunk of at least :data:`BLOCKED_MIN` bytes of an array that shards is
  stored *blocked*: its object id ends in ``.b<k>`` and the object holds,
  after the chunk's bytes, the XXH3 checksum of every block of ``2**k``
  bytes (8 bytes each, little endian). A range read fetches the blocks it
  overlaps and their checksums (the trailer is cached per object), checks
  them and returns the range;
* any other chunk (smaller, not sharded, or written in format 1) is read and
  checked whole the first time any part of it is read; later ranges of a
  verified chunk read just the range.
"""

from __future__ import annotations

import numpy as np
import xxhash

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import CorruptObjectError, NotFoundError
from icechunk_dask.format import ChunkRef, chunk_checksum

__all__ = ["BLOCKED_MIN", "BLOCK_BITS", "blocked_payload", "read_chunk"]

#: Blocks of 256 KiB: a range read fetches at most two partial blocks more than it needs.
BLOCK_BITS = 18
#: Chunks of at least this many bytes are stored blocked.
BLOCKED_MIN = 1 << 20


def blocked_payload(chunk_id: str, data: bytes) -> tuple[str, bytes]:
    """The object id and bytes of a blocked chunk object (chunk bytes, then block checksums)."""
    block = 1 << BLOCK_BITS
    view = memoryview(data)
    sums = np.fromiter(
        (xxhash.xxh3_64_intdigest(view[i : i + block]) for i in range(0, len(data), block)),
        dtype="<u8",
    )
    return f"{chunk_id}.b{BLOCK_BITS}", b"".join((data, sums.tobytes()))


def _block_bits(loc: str) -> int | None:
    head, dot, tail = loc.rpartition(".")
    if not dot or not head or not tail.startswith("b") or not tail[1:].isdigit():
        return None
    return int(tail[1:])


def _missing(key: str, obj: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"chunk {key!r} is referenced but its object {obj!r} is missing: the repository is damaged",
        key=obj,
    )


async def _trailer(assets: AssetManager, obj: str, size: int, bits: int) -> np.ndarray:
    cached = assets.trailers.get(obj)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    nblocks = -(-size // (1 << bits))
    try:
        raw = await assets.storage.get_range(obj, size, 8 * nblocks)
    except NotFoundError:
        raise _missing(obj, obj) from None
    if len(raw) != 8 * nblocks:
        raise CorruptObjectError(
            f"object {obj!r} is truncated: its block checksums are cut", key=obj
        )
    sums = np.frombuffer(raw, dtype="<u8")
    assets.trailers.put(obj, sums, max(1, len(raw)))
    return sums


async def _read_blocked(
    assets: AssetManager, key: str, obj: str, size: int, bits: int, start: int, want: int
) -> bytes:
    """Read ``want`` bytes at ``start`` of a blocked chunk, checking the blocks they touch."""
    if want == 0:
        return b""
    block = 1 << bits
    first, last = start // block, (start + want - 1) // block
    lo, hi = first * block, min((last + 1) * block, size)
    sums = await _trailer(assets, obj, size, bits)

    def check(data: bytes) -> bytes:
        if len(data) != hi - lo:
            raise CorruptObjectError(
                f"chunk {key!r} (object {obj!r}) is truncated: {len(data)} of {hi - lo} bytes",
                key=obj,
            )
        view = memoryview(data)
        for i, b in enumerate(range(first, last + 1)):
            part = view[i * block : (i + 1) * block]
            if xxhash.xxh3_64_intdigest(part) != int(sums[b]):
                raise CorruptObjectError(
                    f"chunk {key!r} (object {obj!r}) fails its checksum in block {b}: it is "
                    "damaged",
                    key=obj,
                )
        return bytes(view[start - lo : start - lo + want])

    try:
        return await assets.storage.get_range_then(obj, lo, hi - lo, check)
    except NotFoundError:
        raise _missing(key, obj) from None


async def read_chunk(
    assets: AssetManager, key: str, ref: ChunkRef, start: int, length: int | None
) -> bytes:
    """Read a stored chunk (or a range of it), verified.

    Parameters
    ----------
    assets : AssetManager
        The repository's objects (storage and caches).
    key : str
        The store key (for messages).
    ref : ChunkRef
        Its reference (an object id, not inline bytes).
    start, length : int, int or None
        The range (``length`` ``None``: to the end).

    Returns
    -------
    bytes
        The bytes asked for.

    Raises
    ------
    CorruptObjectError
        If the object is missing, truncated or fails a checksum.
    """
    loc, offset, size, crc = ref
    assert isinstance(loc, str)
    obj = f"chunks/{loc}"
    whole = start == 0 and (length is None or length >= size)
    start = min(start, size)
    want = size - start if length is None else max(0, min(length, size - start))
    bits = _block_bits(loc) if not whole else None
    if bits is not None:
        return await _read_blocked(assets, key, obj, size, bits, start, want)
    verified_key = f"{loc}:{offset}:{size}:{crc}"
    # A range of an unblocked chunk cannot be checked on its own: the first read of any part
    # of it reads and checks all of it; later ranges of a verified chunk read just the range.
    verify = whole or assets.verified_chunks.get(verified_key) is None
    read_at, read_len = (0, size) if verify else (start, want)

    def check(data: bytes) -> bytes:
        if len(data) != read_len:
            raise CorruptObjectError(
                f"chunk {key!r} (object {obj!r}) is truncated: {len(data)} of {read_len} bytes",
                key=obj,
            )
        if verify and chunk_checksum(data) != crc:
            raise CorruptObjectError(
                f"chunk {key!r} (object {obj!r}) fails its checksum: it is damaged", key=obj
            )
        return data

    try:
        data = await assets.storage.get_range_then(obj, offset + read_at, read_len, check)
    except NotFoundError:
        raise _missing(key, obj) from None
    if verify:
        assets.verified_chunks.put(verified_key, True)
    return data if whole or not verify else data[start : start + want]
