"""Columnar encoding of chunk references (manifests and change records).

A chunk reference is a plain tuple ``(location, offset, length, checksum)``:
``location`` is a chunk-object id (``str``) or the chunk's bytes themselves
(``bytes``, inlined small chunks); ``checksum`` is the 64-bit XXH3 hash of the
chunk's bytes (:func:`chunk_checksum`). ``None`` in a change record means "deleted".

The columns (keys, ids, kinds, offsets, lengths, checksums, inline bytes) are
laid out one after the other; the envelope compresses them, so regular keys
and ids cost a few bytes each.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from operator import itemgetter
from typing import cast

import numpy as np
import xxhash

__all__ = [
    "ChunkRef",
    "chunk_checksum",
    "decode_refs",
    "encode_ref_columns",
    "encode_refs",
    "join_keys",
    "object_ids",
    "ref_columns",
    "same_chunk",
    "strip_joined",
]

ChunkRef = tuple[str | bytes, int, int, int]

_FILE, _INLINE, _DELETED = 0, 1, 2
_COUNTS = struct.Struct("<QQQQ")
_LOC, _OFF, _LEN, _SUM = (itemgetter(i) for i in range(4))


def chunk_checksum(data: bytes | memoryview) -> int:
    """The checksum stored with every chunk reference: XXH3, 64 bits (~30 GB/s)."""
    return xxhash.xxh3_64_intdigest(data)


def same_chunk(a: ChunkRef | None, b: ChunkRef | None) -> bool:
    """Whether two references name the same chunk content (or are both deletions)."""
    if a is None or b is None:
        return a is b
    if a[2] != b[2] or a[3] != b[3]:
        return False
    if isinstance(a[0], bytes) and isinstance(b[0], bytes):
        return a[0] == b[0]
    return True


def ref_columns(
    refs: Sequence[ChunkRef | None],
) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:
    """Transpose references that all point into chunk objects, in C.

    Returns
    -------
    tuple or None
        ``(ids, offsets, lengths, checksums)``, the ids already in their stored
        form (UTF-8, NUL-separated), or ``None`` if there are no references or
        one is a deletion or an inline chunk (the caller takes the general path).
    """
    n = len(refs)
    if not n:
        return None
    file_refs = cast("Sequence[tuple[str, int, int, int]]", refs)
    try:
        # one pass finds both exceptions: a deletion (None) cannot be indexed, and joining
        # fails on an inline chunk's bytes (each check was a pass of its own over the refs)
        id_blob = "\0".join(map(_LOC, file_refs)).encode()
    except TypeError:
        return None
    return (
        id_blob,
        np.fromiter(map(_OFF, file_refs), dtype=np.uint64, count=n),
        np.fromiter(map(_LEN, file_refs), dtype=np.uint64, count=n),
        np.fromiter(map(_SUM, file_refs), dtype=np.uint64, count=n),
    )


def join_keys(keys: Sequence[str], strip: str = "") -> bytes:
    """The keys joined by NUL, with the prefix ``strip`` (that every key has) removed.

    Stripping the joined string in C spares one Python string per key.
    """
    return strip_joined("\0".join(keys).encode(), strip)


def strip_joined(blob: bytes, strip: str) -> bytes:
    """NUL-joined keys (UTF-8) without the prefix ``strip`` that each of them has."""
    if not strip:
        return blob
    head = strip.encode()
    return blob[len(head) :].replace(b"\0" + head, b"\0")


def encode_ref_columns(
    keys: Sequence[str],
    id_blob: bytes,
    offsets: np.ndarray,
    lengths: np.ndarray,
    checksums: np.ndarray,
    strip: str = "",
    key_blob: bytes | None = None,
) -> bytes:
    """Encode references to chunk objects given as columns (see :func:`ref_columns`).

    ``id_blob`` is the ids as :func:`ref_columns` gives them; ``strip`` is a
    prefix that every key has and that is not stored; ``key_blob``, if given,
    is what :func:`join_keys` would make of ``keys`` and ``strip``.
    """
    n = len(keys)
    if key_blob is None:
        key_blob = join_keys(keys, strip)
    elif n and (held := key_blob.count(b"\0") + 1) != n:
        raise ValueError(f"key_blob holds {held} keys, not {n}")
    return b"".join(
        (
            _COUNTS.pack(n, len(key_blob), len(id_blob), 0),
            key_blob,
            id_blob,
            bytes(n),  # kinds: all _FILE
            offsets.astype(np.uint64, copy=False).tobytes(),
            lengths.astype(np.uint64, copy=False).tobytes(),
            checksums.astype(np.uint64, copy=False).tobytes(),
        )
    )


def encode_refs(keys: Sequence[str], refs: Sequence[ChunkRef | None]) -> bytes:
    """Encode parallel sequences of keys and references into columns.

    Parameters
    ----------
    keys
        Keys (or key suffixes); must not contain NUL characters.
    refs
        One reference (or ``None`` for a deletion) per key.

    Returns
    -------
    bytes
        The uncompressed columnar form.
    """
    cols = ref_columns(refs)
    if cols is not None:  # the common case: every chunk in its own object
        return encode_ref_columns(keys, *cols)
    n = len(keys)
    kind_l: list[int] = []
    ids: list[str] = []
    off_l: list[int] = []
    len_l: list[int] = []
    crc_l: list[int] = []
    inline: list[bytes] = []
    for ref in refs:
        if ref is None:
            kind_l.append(_DELETED)
            ids.append("")
            off_l.append(0)
            len_l.append(0)
            crc_l.append(0)
            continue
        loc, off, length, crc = ref
        if isinstance(loc, bytes):
            kind_l.append(_INLINE)
            ids.append("")
            inline.append(loc)
        else:
            kind_l.append(_FILE)
            ids.append(loc)
        off_l.append(off)
        len_l.append(length)
        crc_l.append(crc)
    key_blob = "\0".join(keys).encode()
    id_blob = "\0".join(ids).encode()
    inline_blob = b"".join(inline)
    return b"".join(
        (
            _COUNTS.pack(n, len(key_blob), len(id_blob), len(inline_blob)),
            key_blob,
            id_blob,
            np.array(kind_l, dtype=np.uint8).tobytes(),
            np.array(off_l, dtype=np.uint64).tobytes(),
            np.array(len_l, dtype=np.uint64).tobytes(),
            np.array(crc_l, dtype=np.uint64).tobytes(),
            inline_blob,
        )
    )


def decode_refs(data: bytes) -> tuple[list[str], list[ChunkRef | None]]:
    """Decode the output of :func:`encode_refs`.

    Returns
    -------
    tuple of (list of str, list of ChunkRef or None)
        Keys and their references.

    Raises
    ------
    ValueError
        If the columns are inconsistent (the caller reports the object key).
    """
    if len(data) < _COUNTS.size:
        raise ValueError("chunk reference columns have the wrong size")
    n, klen, ilen, blen = _COUNTS.unpack_from(data)
    pos = _COUNTS.size
    key_blob = bytes(data[pos : pos + klen])
    pos += klen
    id_blob = bytes(data[pos : pos + ilen])
    pos += ilen
    kinds = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos)
    pos += n
    offsets = np.frombuffer(data, dtype=np.uint64, count=n, offset=pos).tolist()
    pos += 8 * n
    lengths = np.frombuffer(data, dtype=np.uint64, count=n, offset=pos).tolist()
    pos += 8 * n
    crcs = np.frombuffer(data, dtype=np.uint64, count=n, offset=pos).tolist()
    pos += 8 * n
    inline_blob = data[pos : pos + blen]
    if pos + blen != len(data):
        raise ValueError("chunk reference columns have the wrong size")
    if n == 0:
        return [], []
    keys = key_blob.decode().split("\0")
    ids = id_blob.decode().split("\0")
    if len(keys) != n or len(ids) != n:
        raise ValueError("chunk reference columns disagree in length")
    refs: list[ChunkRef | None] = []
    if not kinds.any():
        refs.extend(zip(ids, offsets, lengths, crcs, strict=True))
        return keys, refs
    ipos = 0
    for i, kind in enumerate(kinds.tolist()):
        if kind == _FILE:
            refs.append((ids[i], offsets[i], lengths[i], crcs[i]))
        elif kind == _INLINE:
            length = lengths[i]
            refs.append((bytes(inline_blob[ipos : ipos + length]), offsets[i], length, crcs[i]))
            ipos += length
        else:
            refs.append(None)
    return keys, refs


def object_ids(data: bytes) -> list[str]:
    """The chunk-object ids that the references of :func:`encode_refs` output point into.

    Inline chunks and deletions name no object and are left out; an object
    referenced several times (a pack) appears once per reference. Reads only
    the id and kind columns, so it costs a fraction of :func:`decode_refs`.

    Raises
    ------
    ValueError
        If the columns are inconsistent (the caller reports the object key).
    """
    if len(data) < _COUNTS.size:
        raise ValueError("chunk reference columns have the wrong size")
    n, klen, ilen, blen = _COUNTS.unpack_from(data)
    pos = _COUNTS.size + klen
    id_blob = bytes(data[pos : pos + ilen])
    pos += ilen
    if pos + n + 24 * n + blen != len(data):
        raise ValueError("chunk reference columns have the wrong size")
    if n == 0:
        return []
    ids = id_blob.decode().split("\0")
    if len(ids) != n:
        raise ValueError("chunk reference columns disagree in length")
    kinds = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos)
    if not kinds.any():
        return ids
    return [i for i, kind in zip(ids, kinds.tolist(), strict=True) if kind == _FILE]
