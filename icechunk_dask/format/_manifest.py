"""Manifests: the chunk references of one box of one node (one layer).

The header names the manifest's own id, its node and its box, so a manifest
read from the wrong key (an object copied over another) is refused. The body
is the columnar encoding of :mod:`icechunk_dask.format._refs_codec`; a layer
above the oldest may hold tombstones (``None``): keys deleted since.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icechunk_dask._exceptions import CorruptObjectError
from icechunk_dask.format._envelope import ObjectKind, decode_object_version, encode_object
from icechunk_dask.format._refs_codec import (
    ChunkRef,
    decode_refs,
    encode_ref_columns,
    encode_refs,
    object_ids,
)
from icechunk_dask.format._snapshot import key_id

__all__ = ["decode_manifest", "encode_manifest", "encode_manifest_columns", "manifest_object_ids"]


def _header(mid: str, node: str, box: str, count: int, n_del: int) -> dict[str, object]:
    return {"id": mid, "node": node, "box": box, "count": count, "n_del": n_del}


def encode_manifest(mid: str, node: str, box: str, entries: dict[str, ChunkRef | None]) -> bytes:
    """Encode one manifest layer: key suffix -> reference (``None``: a tombstone).

    Parameters
    ----------
    mid : str
        The manifest's id (it is stored at ``manifests/<mid>``).
    node : str
        The node path.
    box : str
        The box key (``""``: the flat box).
    entries : dict
        Key suffixes (relative to the node) and their references.

    Returns
    -------
    bytes
        The stored form.
    """
    refs = list(entries.values())
    n_del = sum(1 for r in refs if r is None)
    header = _header(mid, node, box, len(refs), n_del)
    return encode_object(ObjectKind.MANIFEST, header, encode_refs(list(entries), refs))


def encode_manifest_columns(
    mid: str,
    node: str,
    box: str,
    suffixes: Sequence[str],
    columns: tuple[bytes, np.ndarray, np.ndarray, np.ndarray],
    strip: str = "",
    key_blob: bytes | None = None,
) -> bytes:
    """Encode a layer of references to chunk objects given as columns (no tombstones).

    ``suffixes`` may be whole keys with the prefix ``strip`` that is not stored;
    ``key_blob``, if given, is the stored suffixes joined by NUL (UTF-8).
    """
    header = _header(mid, node, box, len(suffixes), 0)
    body = encode_ref_columns(suffixes, *columns, strip=strip, key_blob=key_blob)
    return encode_object(ObjectKind.MANIFEST, header, body)


def decode_manifest(
    data: bytes, key: str, *, node: str | None = None, box: str | None = None
) -> dict[str, ChunkRef | None]:
    """Decode a manifest and check that it is the one ``key`` (and the caller) expects.

    Parameters
    ----------
    data : bytes
        The stored form.
    key : str
        Where it was read from (``manifests/<id>``).
    node, box : str or None
        The node and box the snapshot says this manifest holds (checked when given).

    Returns
    -------
    dict
        Key suffix -> reference, ``None`` for a tombstone.

    Raises
    ------
    CorruptObjectError
        If the manifest is damaged or belongs to another key, node or box.
    """
    version, header, body = decode_object_version(data, key, ObjectKind.MANIFEST)
    try:
        keys, refs = decode_refs(body)
        if len(keys) != header["count"]:
            raise ValueError("count mismatch")
        if version >= 2:
            expected = (key_id(key), node if node is not None else header["node"])
            expected_box = box if box is not None else header["box"]
            if (header["id"], header["node"]) != expected or header["box"] != expected_box:
                raise CorruptObjectError(
                    f"object {key!r} is manifest {header['id']!r} of node {header['node']!r} "
                    f"box {header['box']!r}, not the one expected there: an object was copied "
                    "over another; the repository is damaged",
                    key=key,
                )
        elif node is not None and header["node"] != node:
            raise CorruptObjectError(
                f"object {key!r} is a manifest of node {header['node']!r}, not of {node!r}",
                key=key,
            )
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise CorruptObjectError(f"object {key!r} cannot be decoded: {e!r}", key=key) from e
    if version < 2 and None in refs:
        raise CorruptObjectError(
            f"object {key!r} cannot be decoded: ValueError('deletion in a manifest')", key=key
        )
    return dict(zip(keys, refs, strict=True))


def manifest_object_ids(data: bytes, key: str) -> list[str]:
    """The chunk objects a manifest's references point into (for garbage collection).

    Checks the envelope and that the manifest is the one ``key`` names, but
    decodes only the id column (see :func:`~icechunk_dask.format._refs_codec.object_ids`).

    Raises
    ------
    CorruptObjectError
        If the manifest is damaged or belongs to another key.
    """
    version, header, body = decode_object_version(data, key, ObjectKind.MANIFEST)
    if version >= 2 and header.get("id") != key_id(key):
        raise CorruptObjectError(
            f"object {key!r} is manifest {header.get('id')!r}, not the one its key names: an "
            "object was copied over another; the repository is damaged",
            key=key,
        )
    try:
        return object_ids(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptObjectError(f"object {key!r} cannot be decoded: {e!r}", key=key) from e
