"""Repository objects <-> bytes: config, snapshots, manifests, transaction logs, refs.

Nothing here does I/O. Key layout (see ``docs/format.md``)::

    config.json                      repository id and format version
    refs/branch.<name>/<seq>.json    create-only branch log; the highest seq is the tip
    refs/branch.<name>/hint.json     best-effort lower bound of the tip's seq
    refs/tag.<name>.json             create-only tag
    refs/tag.<name>.deleted.json     create-only tombstone of a deleted tag
    snapshots/<id>                   metadata documents + manifest ids per node
    manifests/<id>                   chunk references of one shard of one node
    transactions/<snapshot id>       which keys the commit changed
    chunks/<id>                      chunk bytes exactly as zarr wrote them
    scratch/<id>                     uncommitted chunk refs shipped to forks
    sessions/<session id>/<writer>   markers of worker-side writers (see Session)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icechunk_dask._exceptions import CorruptObjectError
from icechunk_dask.format._envelope import ObjectKind, decode_object, encode_object
from icechunk_dask.format._refs_codec import (
    ChunkRef,
    decode_refs,
    encode_ref_columns,
    encode_refs,
)

__all__ = [
    "BranchRef",
    "NodeManifests",
    "RepoConfig",
    "Snapshot",
    "TagRef",
    "TransactionLog",
    "branch_ref_key",
    "decode_manifest",
    "decode_scratch",
    "encode_manifest",
    "encode_manifest_columns",
    "encode_scratch",
    "tag_key",
]


def branch_ref_key(branch: str, seq: int) -> str:
    """Key of entry ``seq`` of a branch's create-only log."""
    return f"refs/branch.{branch}/{seq:020d}.json"


def tag_key(tag: str, *, deleted: bool = False) -> str:
    """Key of a tag (or of its tombstone)."""
    return f"refs/tag.{tag}.deleted.json" if deleted else f"refs/tag.{tag}.json"


def _corrupt(key: str, e: Exception) -> CorruptObjectError:
    return CorruptObjectError(f"object {key!r} cannot be decoded: {e!r}", key=key)


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """Repository-wide settings stored in ``config.json``."""

    repo_id: str
    format_version: int
    created_at: str
    inline_threshold: int = 64
    """Chunks of at most this many bytes are stored inside manifests."""
    manifest_shard_size: int = 65536
    """Target maximum number of chunk references per manifest shard."""

    def encode(self) -> bytes:
        """Return the stored form."""
        header = {
            "repo_id": self.repo_id,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "inline_threshold": self.inline_threshold,
            "manifest_shard_size": self.manifest_shard_size,
        }
        return encode_object(ObjectKind.CONFIG, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> RepoConfig:
        """Parse the stored form."""
        header, _ = decode_object(data, key, ObjectKind.CONFIG)
        try:
            return cls(
                repo_id=str(header["repo_id"]),
                format_version=int(header["format_version"]),
                created_at=str(header["created_at"]),
                inline_threshold=int(header["inline_threshold"]),
                manifest_shard_size=int(header["manifest_shard_size"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(key, e) from e


@dataclass(frozen=True, slots=True)
class NodeManifests:
    """The manifest shards of one node: shard ``i`` holds keys with ``crc32(suffix) % n == i``."""

    shards: tuple[str | None, ...]
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable state of the whole hierarchy."""

    id: str
    parent_id: str | None
    written_at: str
    message: str
    metadata: dict[str, Any]
    meta: dict[str, bytes] = field(repr=False)
    """Metadata documents (``zarr.json`` and friends) by key."""
    nodes: dict[str, NodeManifests] = field(repr=False)
    """Chunk manifests by node path."""

    def encode(self) -> bytes:
        """Return the stored form."""
        text: dict[str, str] = {}
        b64: dict[str, str] = {}
        for k, v in self.meta.items():
            try:
                text[k] = v.decode()
            except UnicodeDecodeError:
                b64[k] = base64.b64encode(v).decode()
        body = {
            "meta_text": text,
            "meta_b64": b64,
            "nodes": {p: [list(n.shards), n.count] for p, n in self.nodes.items()},
        }
        header = {
            "id": self.id,
            "parent": self.parent_id,
            "time": self.written_at,
            "message": self.message,
            "metadata": self.metadata,
        }
        return encode_object(ObjectKind.SNAPSHOT, header, json.dumps(body).encode())

    @classmethod
    def decode(cls, data: bytes, key: str) -> Snapshot:
        """Parse the stored form."""
        header, body = decode_object(data, key, ObjectKind.SNAPSHOT)
        try:
            parsed = json.loads(body)
            meta = {k: v.encode() for k, v in parsed["meta_text"].items()}
            meta.update({k: base64.b64decode(v) for k, v in parsed["meta_b64"].items()})
            nodes = {
                p: NodeManifests(tuple(shards), int(count))
                for p, (shards, count) in parsed["nodes"].items()
            }
            return cls(
                id=header["id"],
                parent_id=header["parent"],
                written_at=header["time"],
                message=header["message"],
                metadata=header["metadata"],
                meta=meta,
                nodes=nodes,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(key, e) from e


def encode_manifest(node: str, shard: int, nshards: int, entries: dict[str, ChunkRef]) -> bytes:
    """Encode one manifest shard (suffix -> chunk reference)."""
    header = {"node": node, "shard": shard, "of": nshards, "count": len(entries)}
    return encode_object(
        ObjectKind.MANIFEST, header, encode_refs(list(entries), list(entries.values()))
    )


def encode_manifest_columns(
    node: str,
    shard: int,
    nshards: int,
    suffixes: Sequence[str],
    columns: tuple[Sequence[str], np.ndarray, np.ndarray, np.ndarray],
) -> bytes:
    """Encode one manifest shard given as columns (same bytes as :func:`encode_manifest`)."""
    header = {"node": node, "shard": shard, "of": nshards, "count": len(suffixes)}
    return encode_object(ObjectKind.MANIFEST, header, encode_ref_columns(suffixes, *columns))


def decode_manifest(data: bytes, key: str) -> dict[str, ChunkRef]:
    """Decode one manifest shard."""
    header, body = decode_object(data, key, ObjectKind.MANIFEST)
    try:
        keys, refs = decode_refs(body)
        if len(keys) != header["count"]:
            raise ValueError("count mismatch")
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise _corrupt(key, e) from e
    out = dict(zip(keys, refs, strict=True))
    if None in refs:
        raise _corrupt(key, ValueError("deletion in a manifest"))
    return out  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class TransactionLog:
    """What one commit changed: used to detect conflicts when rebasing and for diffs."""

    snapshot_id: str
    parent_id: str | None
    meta_keys: AbstractSet[str]
    chunk_keys: AbstractSet[str]

    def encode(self) -> bytes:
        """Return the stored form."""
        header = {
            "snapshot": self.snapshot_id,
            "parent": self.parent_id,
            "meta": sorted(self.meta_keys),
            "nchunks": len(self.chunk_keys),
        }
        return encode_object(ObjectKind.TRANSACTION, header, "\0".join(self.chunk_keys).encode())

    @classmethod
    def decode(cls, data: bytes, key: str) -> TransactionLog:
        """Parse the stored form."""
        header, body = decode_object(data, key, ObjectKind.TRANSACTION)
        try:
            chunks = frozenset(body.decode().split("\0")) if header["nchunks"] else frozenset()
            if len(chunks) != header["nchunks"]:
                raise ValueError("chunk count mismatch")
            return cls(header["snapshot"], header["parent"], frozenset(header["meta"]), chunks)
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(key, e) from e


@dataclass(frozen=True, slots=True)
class BranchRef:
    """One entry of a branch log: the branch points at ``snapshot_id`` (or was deleted)."""

    snapshot_id: str | None
    parent_id: str | None
    token: str
    written_at: str
    deleted: bool = False

    def encode(self) -> bytes:
        """Return the stored form (unique thanks to ``token``)."""
        header = {
            "snapshot": self.snapshot_id,
            "parent": self.parent_id,
            "token": self.token,
            "time": self.written_at,
            "deleted": self.deleted,
        }
        return encode_object(ObjectKind.BRANCH_REF, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> BranchRef:
        """Parse the stored form."""
        header, _ = decode_object(data, key, ObjectKind.BRANCH_REF)
        try:
            return cls(
                header["snapshot"],
                header["parent"],
                header["token"],
                header["time"],
                bool(header["deleted"]),
            )
        except (KeyError, TypeError) as e:
            raise _corrupt(key, e) from e


@dataclass(frozen=True, slots=True)
class TagRef:
    """A tag (immutable) or a tag's tombstone."""

    snapshot_id: str
    token: str
    written_at: str

    def encode(self) -> bytes:
        """Return the stored form."""
        header = {"snapshot": self.snapshot_id, "token": self.token, "time": self.written_at}
        return encode_object(ObjectKind.TAG_REF, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> TagRef:
        """Parse the stored form."""
        header, _ = decode_object(data, key, ObjectKind.TAG_REF)
        try:
            return cls(header["snapshot"], header["token"], header["time"])
        except (KeyError, TypeError) as e:
            raise _corrupt(key, e) from e


def encode_scratch(base: str, refs: dict[str, ChunkRef | None]) -> bytes:
    """Encode uncommitted chunk references that a pickled fork must be able to read."""
    return encode_object(
        ObjectKind.SCRATCH, {"base": base}, encode_refs(list(refs), list(refs.values()))
    )


def decode_scratch(data: bytes, key: str) -> dict[str, ChunkRef | None]:
    """Decode :func:`encode_scratch` output."""
    _, body = decode_object(data, key, ObjectKind.SCRATCH)
    try:
        keys, refs = decode_refs(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(key, e) from e
    return dict(zip(keys, refs, strict=True))
