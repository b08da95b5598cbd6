"""Immutable, versioned on-disk objects and their byte forms. No I/O here."""

from __future__ import annotations

from icechunk_dask.format._envelope import (
    FORMAT_VERSION,
    ObjectKind,
    decode_object,
    encode_object,
)
from icechunk_dask.format._ids import ID_PATTERN, new_id, now_iso
from icechunk_dask.format._layout import shard_of, shard_order
from icechunk_dask.format._names import validate_ref_name, validate_snapshot_id
from icechunk_dask.format._objects import (
    BranchRef,
    NodeManifests,
    RepoConfig,
    Snapshot,
    TagRef,
    TransactionLog,
    branch_ref_key,
    decode_manifest,
    decode_scratch,
    encode_manifest,
    encode_manifest_columns,
    encode_scratch,
    tag_key,
)
from icechunk_dask.format._refs_codec import (
    ChunkRef,
    chunk_checksum,
    decode_refs,
    encode_refs,
    ref_columns,
    same_chunk,
)

__all__ = [
    "FORMAT_VERSION",
    "ID_PATTERN",
    "BranchRef",
    "ChunkRef",
    "NodeManifests",
    "ObjectKind",
    "RepoConfig",
    "Snapshot",
    "TagRef",
    "TransactionLog",
    "branch_ref_key",
    "chunk_checksum",
    "decode_manifest",
    "decode_object",
    "decode_refs",
    "decode_scratch",
    "encode_manifest",
    "encode_manifest_columns",
    "encode_object",
    "encode_refs",
    "encode_scratch",
    "new_id",
    "now_iso",
    "ref_columns",
    "same_chunk",
    "shard_of",
    "shard_order",
    "tag_key",
    "validate_ref_name",
    "validate_snapshot_id",
]
