"""Repository objects <-> bytes: config, transaction logs, refs, scratch.

Nothing here does I/O. Key layout (see ``docs/format.md``)::

    config.json                      repository id, format version, settings
    refs/branch.<name>/<seq>.json    create-only branch log; the highest seq is the tip
    refs/branch.<name>/hint.json     best-effort lower bound of the tip's seq
    refs/tag.<name>.json             create-only tag
    refs/tag.<name>.deleted.json     create-only tombstone of a deleted tag
    snapshots/<id>                   metadata documents + manifest layers per node and box
    manifests/<id>                   chunk references of one layer of one box of one node
    transactions/<snapshot id>       which keys the commit changed
    chunks/<id>                      chunk bytes exactly as zarr wrote them (or packs)
    scratch/<id>                     uncommitted chunk refs shipped to forks
    sessions/<session id>/<writer>   markers of worker-side writers (see Session)

Every object names the key it belongs at (snapshot and manifest ids, the
branch and sequence number of a branch entry, a tag's name); a valid object
read from another key is reported as damage, never used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from icechunk_dask._exceptions import CorruptObjectError
from icechunk_dask.format._envelope import ObjectKind, decode_object, encode_object
from icechunk_dask.format._refs_codec import ChunkRef, decode_refs, encode_refs
from icechunk_dask.format._snapshot import key_id

__all__ = [
    "BranchRef",
    "RepoConfig",
    "TagRef",
    "TransactionLog",
    "branch_ref_key",
    "decode_scratch",
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


def _misplaced(key: str, what: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"object {key!r} is {what}, not the one its key names: an object was copied over "
        "another; the repository is damaged",
        key=key,
    )


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """Repository-wide settings stored in ``config.json``.

    Attributes
    ----------
    repo_id : str
        The repository's unique id.
    format_version : int
        The format it was created with.
    created_at : str
        When (ISO 8601, UTC).
    inline_threshold : int
        Chunks of at most this many bytes are stored inside manifests.
    manifest_box_refs : int
        About how many chunk references one manifest box holds (default split).
    manifest_splits : dict
        Per array: a regular expression matched against the array's path ->
        {dimension name or index: box extent in chunks}; the first match wins,
        dimensions not listed are not split.
    manifest_max_layers : int
        A box with more layers than this is compacted into one by the commit.
    """

    repo_id: str
    format_version: int
    created_at: str
    inline_threshold: int = 64
    manifest_box_refs: int = 65536
    manifest_splits: Mapping[str, Mapping[str | int, int]] = field(default_factory=dict)
    manifest_max_layers: int = 32

    def encode(self) -> bytes:
        """Return the stored form."""
        header = {
            "repo_id": self.repo_id,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "inline_threshold": self.inline_threshold,
            "manifest_box_refs": self.manifest_box_refs,
            "manifest_splits": [
                [pattern, [[d, n] for d, n in dims.items()]]
                for pattern, dims in self.manifest_splits.items()
            ],
            "manifest_max_layers": self.manifest_max_layers,
        }
        return encode_object(ObjectKind.CONFIG, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> RepoConfig:
        """Parse the stored form (format 1 configs get the format-2 defaults)."""
        header, _ = decode_object(data, key, ObjectKind.CONFIG)
        try:
            return cls(
                repo_id=str(header["repo_id"]),
                format_version=int(header["format_version"]),
                created_at=str(header["created_at"]),
                inline_threshold=int(header["inline_threshold"]),
                manifest_box_refs=int(header.get("manifest_box_refs", 65536)),
                manifest_splits={
                    str(p): {d: int(n) for d, n in dims}
                    for p, dims in header.get("manifest_splits", [])
                },
                manifest_max_layers=int(header.get("manifest_max_layers", 32)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(key, e) from e


@dataclass(frozen=True, slots=True)
class TransactionLog:
    """What one commit changed: used to detect conflicts when rebasing and for diffs.

    Attributes
    ----------
    snapshot_id, parent_id : str, str or None
        The commit and its parent.
    meta_keys : set of str
        Metadata documents written or deleted.
    chunk_keys : set of str
        Chunk keys written or deleted.
    cleared : set of str
        Prefixes under which every committed key was deleted first (``delete_dir``).
    layers : dict of str to dict of str to tuple of str
        Node -> box -> ids of the manifests pre-built by a Dask job that the commit
        added as they were: their keys are changed too, without being listed in
        ``chunk_keys`` (read the manifests for them).
    """

    snapshot_id: str
    parent_id: str | None
    meta_keys: AbstractSet[str]
    chunk_keys: AbstractSet[str]
    cleared: AbstractSet[str] = frozenset()
    layers: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def encode(self, joined: Sequence[bytes] | None = None) -> bytes:
        """Return the stored form.

        ``joined`` may give the chunk keys already joined by NUL (UTF-8), in
        parts (each part holding whole keys; any order): the commit has them.
        """
        n = len(self.chunk_keys)
        if joined is None:
            keys = "\0".join(self.chunk_keys).encode()
        elif (keys := b"\0".join(joined)).count(b"\0") + 1 != n and (n or keys):
            raise ValueError(f"the joined keys are not the transaction's {n} chunk keys")
        header: dict[str, Any] = {
            "snapshot": self.snapshot_id,
            "parent": self.parent_id,
            "meta": sorted(self.meta_keys),
            "cleared": sorted(self.cleared),
            "nchunks": len(self.chunk_keys),
        }
        if self.layers:
            header["layers"] = {
                n: {b: list(i) for b, i in bx.items()} for n, bx in self.layers.items()
            }
        return encode_object(ObjectKind.TRANSACTION, header, keys)

    @classmethod
    def decode(cls, data: bytes, key: str) -> TransactionLog:
        """Parse the stored form and check that it belongs at ``key``."""
        header, body = decode_object(data, key, ObjectKind.TRANSACTION)
        try:
            chunks = frozenset(body.decode().split("\0")) if header["nchunks"] else frozenset()
            if len(chunks) != header["nchunks"]:
                raise ValueError("chunk count mismatch")
            log = cls(
                header["snapshot"],
                header["parent"],
                frozenset(header["meta"]),
                chunks,
                frozenset(header.get("cleared", ())),
                {
                    str(n): {str(b): tuple(map(str, ids)) for b, ids in boxes.items()}
                    for n, boxes in header.get("layers", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(key, e) from e
        if log.snapshot_id != key_id(key):
            raise _misplaced(key, f"the transaction log of {log.snapshot_id!r}")
        return log


@dataclass(frozen=True, slots=True)
class BranchRef:
    """One entry of a branch log: the branch points at ``snapshot_id`` (or was deleted)."""

    snapshot_id: str | None
    parent_id: str | None
    token: str
    written_at: str
    deleted: bool = False

    def encode(self, branch: str, seq: int) -> bytes:
        """Return the stored form of entry ``seq`` of ``branch`` (unique thanks to ``token``)."""
        header = {
            "branch": branch,
            "seq": seq,
            "snapshot": self.snapshot_id,
            "parent": self.parent_id,
            "token": self.token,
            "time": self.written_at,
            "deleted": self.deleted,
        }
        return encode_object(ObjectKind.BRANCH_REF, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> BranchRef:
        """Parse the stored form and check that it is the entry ``key`` names."""
        header, _ = decode_object(data, key, ObjectKind.BRANCH_REF)
        try:
            ref = cls(
                header["snapshot"],
                header["parent"],
                header["token"],
                header["time"],
                bool(header["deleted"]),
            )
        except (KeyError, TypeError) as e:
            raise _corrupt(key, e) from e
        # format 1 entries do not name themselves
        if "branch" in header and branch_ref_key(str(header["branch"]), int(header["seq"])) != key:
            raise _misplaced(key, f"entry {header['seq']} of branch {header['branch']!r}")
        return ref


@dataclass(frozen=True, slots=True)
class TagRef:
    """A tag (immutable) or a tag's tombstone."""

    snapshot_id: str
    token: str
    written_at: str

    def encode(self, tag: str, *, deleted: bool = False) -> bytes:
        """Return the stored form of tag ``tag`` (or of its tombstone)."""
        header = {
            "tag": tag,
            "deleted": deleted,
            "snapshot": self.snapshot_id,
            "token": self.token,
            "time": self.written_at,
        }
        return encode_object(ObjectKind.TAG_REF, header, compress=False)

    @classmethod
    def decode(cls, data: bytes, key: str) -> TagRef:
        """Parse the stored form and check that it is the tag (or tombstone) ``key`` names."""
        header, _ = decode_object(data, key, ObjectKind.TAG_REF)
        try:
            ref = cls(header["snapshot"], header["token"], header["time"])
        except (KeyError, TypeError) as e:
            raise _corrupt(key, e) from e
        # format 1 tags do not name themselves
        named = tag_key(str(header.get("tag")), deleted=bool(header.get("deleted")))
        if "tag" in header and named != key:
            raise _misplaced(key, f"tag {header['tag']!r}")
        return ref


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
