"""Snapshots: the metadata documents of a hierarchy and, per node, its manifest layers.

Format version 2 (see ``docs/format.md``): a node (an array, or the
directory of keys that belong to no known array) keeps its chunk references
in *boxes* of its chunk grid (:mod:`icechunk_dask.format._boxes`); each box
is a stack of manifest *layers*, newest first. A commit adds a layer with
what it changed in a box (merging the newest small layers into it), so its
cost follows the change, not the box. A reference found in a newer layer
hides the same key in older ones; a deletion is a tombstone until the box
is compacted.

Format version 1 snapshots (manifests sharded by a hash of the key) are
decoded into :class:`NodeManifests` with ``legacy`` shards and stay readable;
a commit rewrites a legacy node into boxes the first time it changes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from icechunk_dask._exceptions import CorruptObjectError
from icechunk_dask.format._boxes import Encoding
from icechunk_dask.format._envelope import ObjectKind, decode_object_version, encode_object
from icechunk_dask.format._locate import array_paths

__all__ = ["Layer", "NodeManifests", "Snapshot", "key_id"]


def key_id(key: str) -> str:
    """The id part of an object key (``"snapshots/<id>"`` -> ``"<id>"``)."""
    return key.rpartition("/")[2]


def _corrupt(key: str, e: Exception) -> CorruptObjectError:
    return CorruptObjectError(f"object {key!r} cannot be decoded: {e!r}", key=key)


@dataclass(frozen=True, slots=True)
class Layer:
    """One manifest of a box: its id and how many references and tombstones it holds."""

    id: str
    n_set: int
    n_del: int = 0

    @property
    def size(self) -> int:
        """Entries in the manifest (references and tombstones)."""
        return self.n_set + self.n_del


@dataclass(frozen=True, slots=True)
class NodeManifests:
    """The manifests of one node.

    Attributes
    ----------
    encoding : tuple of (str, str) or None
        The array's chunk key encoding, ``None`` for a node without a box layout.
    split : tuple of int or None
        Box extents in chunks per dimension (``None``: every key is in the flat box).
    boxes : dict of str to tuple of Layer
        Box key -> layers, newest first.
    legacy : tuple of (str or None)
        Format 1 only: hash shards (shard ``i`` holds keys with ``crc32(suffix) % n == i``).
    legacy_count : int
        Format 1 only: references in the legacy shards.
    """

    encoding: Encoding | None = None
    split: tuple[int, ...] | None = None
    boxes: dict[str, tuple[Layer, ...]] = field(default_factory=dict)
    legacy: tuple[str | None, ...] = ()
    legacy_count: int = 0

    @property
    def is_legacy(self) -> bool:
        """Whether this node still has format-1 shards."""
        return bool(self.legacy)

    @property
    def upper_count(self) -> int:
        """An upper bound of the references stored (exact when no layer has tombstones)."""
        return self.legacy_count + sum(
            layer.n_set for layers in self.boxes.values() for layer in layers
        )

    @property
    def exact(self) -> bool:
        """Whether :attr:`upper_count` is exact (no layer holds a tombstone or hides another)."""
        return not self.legacy and all(
            len(layers) == 1 and layers[0].n_del == 0 for layers in self.boxes.values()
        )

    @property
    def surely_nonempty(self) -> bool:
        """Whether some reference is certainly stored, without reading a manifest.

        True when a layer sets more keys than the newer layers of its box can
        delete (only a tombstone hides an older reference).
        """
        for layers in self.boxes.values():
            deletions = 0
            for layer in layers:  # newest first
                if layer.n_set > deletions:
                    return True
                deletions += layer.n_del
        return False

    def manifest_ids(self) -> list[str]:
        """Every manifest this node refers to."""
        ids = [m for m in self.legacy if m is not None]
        ids.extend(layer.id for layers in self.boxes.values() for layer in layers)
        return ids

    def to_json(self) -> dict[str, Any]:
        """The stored form (format 2)."""
        out: dict[str, Any] = {
            "enc": list(self.encoding) if self.encoding is not None else None,
            "split": list(self.split) if self.split is not None else None,
            "boxes": {
                k: [[layer.id, layer.n_set, layer.n_del] for layer in layers]
                for k, layers in self.boxes.items()
            },
        }
        if self.legacy:
            out["legacy"] = [list(self.legacy), self.legacy_count]
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> NodeManifests:
        """Parse :meth:`to_json` output."""
        enc = doc["enc"]
        split = doc["split"]
        legacy = doc.get("legacy")
        return cls(
            encoding=(str(enc[0]), str(enc[1])) if enc is not None else None,
            split=tuple(int(e) for e in split) if split is not None else None,
            boxes={
                str(k): tuple(Layer(str(i), int(s), int(d)) for i, s, d in layers)
                for k, layers in doc["boxes"].items()
            },
            legacy=tuple(legacy[0]) if legacy else (),
            legacy_count=int(legacy[1]) if legacy else 0,
        )


@dataclass(frozen=True)
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

    @cached_property
    def arrays(self) -> frozenset[str]:
        """The paths of the snapshot's arrays (they own the chunk keys under them)."""
        return array_paths(self.meta)

    def encode(self) -> bytes:
        """Return the stored form (format 2)."""
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
            "nodes": {p: n.to_json() for p, n in self.nodes.items()},
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
        """Parse the stored form (format 1 or 2) and check that it belongs at ``key``.

        Raises
        ------
        CorruptObjectError
            If it is damaged, or is another snapshot than the key names.
        """
        version, header, body = decode_object_version(data, key, ObjectKind.SNAPSHOT)
        try:
            parsed = json.loads(body)
            meta = {k: v.encode() for k, v in parsed["meta_text"].items()}
            meta.update({k: base64.b64decode(v) for k, v in parsed["meta_b64"].items()})
            if version == 1:
                nodes = {
                    p: NodeManifests(legacy=tuple(shards), legacy_count=int(count))
                    for p, (shards, count) in parsed["nodes"].items()
                }
            else:
                nodes = {p: NodeManifests.from_json(n) for p, n in parsed["nodes"].items()}
            snap = cls(
                id=header["id"],
                parent_id=header["parent"],
                written_at=header["time"],
                message=header["message"],
                metadata=header["metadata"],
                meta=meta,
                nodes=nodes,
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise _corrupt(key, e) from e
        if snap.id != key_id(key):
            raise CorruptObjectError(
                f"object {key!r} holds snapshot {snap.id!r}, not the one its key names: "
                "an object was copied over another; the repository is damaged",
                key=key,
            )
        if snap.parent_id == snap.id:
            raise CorruptObjectError(f"snapshot {key!r} names itself as its parent", key=key)
        return snap
