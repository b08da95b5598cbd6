"""Immutable, versioned on-disk objects and their byte forms. No I/O here."""

from __future__ import annotations

from icechunk_dask.format._boxes import (
    FLAT,
    Encoding,
    array_layout,
    box_key,
    choose_split,
    group_boxes,
    group_joined,
    parse_chunk_suffix,
)
from icechunk_dask.format._envelope import (
    FORMAT_VERSION,
    ObjectKind,
    decode_object,
    decode_object_version,
    encode_object,
)
from icechunk_dask.format._expiry import EXPIRED_PREFIX, ExpiryMarker, expiry_key
from icechunk_dask.format._ids import ID_PATTERN, new_id, now_iso
from icechunk_dask.format._layout import shard_of, shard_order
from icechunk_dask.format._manifest import (
    decode_manifest,
    encode_manifest,
    encode_manifest_columns,
    manifest_object_ids,
)
from icechunk_dask.format._names import validate_ref_name, validate_snapshot_id
from icechunk_dask.format._objects import (
    BranchRef,
    RepoConfig,
    TagRef,
    TransactionLog,
    branch_ref_key,
    decode_scratch,
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
from icechunk_dask.format._snapshot import Layer, NodeManifests, Snapshot, key_id

__all__ = [
    "EXPIRED_PREFIX",
    "FLAT",
    "FORMAT_VERSION",
    "ID_PATTERN",
    "BranchRef",
    "ChunkRef",
    "Encoding",
    "ExpiryMarker",
    "Layer",
    "NodeManifests",
    "ObjectKind",
    "RepoConfig",
    "Snapshot",
    "TagRef",
    "TransactionLog",
    "array_layout",
    "box_key",
    "branch_ref_key",
    "choose_split",
    "chunk_checksum",
    "decode_manifest",
    "decode_object",
    "decode_object_version",
    "decode_refs",
    "decode_scratch",
    "encode_manifest",
    "encode_manifest_columns",
    "encode_object",
    "encode_refs",
    "encode_scratch",
    "expiry_key",
    "group_boxes",
    "group_joined",
    "key_id",
    "manifest_object_ids",
    "new_id",
    "now_iso",
    "parse_chunk_suffix",
    "ref_columns",
    "same_chunk",
    "shard_of",
    "shard_order",
    "tag_key",
    "validate_ref_name",
    "validate_snapshot_id",
]
