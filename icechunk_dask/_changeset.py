"""ChangeSet: what a session changed, as pure data, with conflict-checked merges.

A change set maps metadata keys to their new documents and chunk keys to
their new :data:`~icechunk_dask.format.ChunkRef` (``None`` = deleted). It also
remembers, for keys that a fork changed on top of its parent's *uncommitted*
value, that previous value (``prev``), so that merging the fork back into its
parent is a fast-forward rather than a conflict. ``writers`` names the
worker-side session copies whose writes the record carries.

A record may also carry *pre-built manifest layers* (``layers``): the
references of whole boxes of an array's chunk grid that a Dask job's tree
reduction already stored as manifests on its workers (see
:mod:`icechunk_dask._buildboxes`), so that what reaches the client is
O(manifests), not O(chunks). A box's layers are older than the record's
chunk entries in the same box; two records that both change one box cannot
be merged without loading those layers (:func:`colliding_boxes`; the
session's merge does it, :mod:`icechunk_dask._prebuilt`).

Nothing here does I/O. A change set pickles to a compact, compressed,
columnar form (a few bytes to ~20 bytes per chunk).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from icechunk_dask._exceptions import (
    Conflict,
    ConflictError,
    ConflictType,
    ErrorKind,
    InvalidInputError,
)
from icechunk_dask.format import (
    FLAT,
    ChunkRef,
    NodeManifests,
    ObjectKind,
    decode_object,
    decode_refs,
    encode_object,
    encode_refs,
    group_boxes,
    same_chunk,
)

__all__ = ["ChangeSet", "boxes_of_keys", "colliding_boxes", "layered_refs"]

_WIRE_KEY = "<change record>"


def _encode_docs(docs: dict[str, bytes | None]) -> bytes:
    """``u32 n`` then per document ``u32 key length | key | i64 length (-1: deleted) | bytes``."""
    parts = [len(docs).to_bytes(4, "little")]
    for key, doc in docs.items():
        k = key.encode()
        parts += [len(k).to_bytes(4, "little"), k]
        parts.append((-1 if doc is None else len(doc)).to_bytes(8, "little", signed=True))
        if doc is not None:
            parts.append(doc)
    return b"".join(parts)


def _decode_docs(data: memoryview) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    pos = 4
    for _ in range(int.from_bytes(data[:4], "little")):
        klen = int.from_bytes(data[pos : pos + 4], "little")
        key = bytes(data[pos + 4 : pos + 4 + klen]).decode()
        pos += 4 + klen
        size = int.from_bytes(data[pos : pos + 8], "little", signed=True)
        pos += 8
        if size < 0:
            out[key] = None
        else:
            out[key] = bytes(data[pos : pos + size])
            pos += size
    if pos != len(data):
        raise ValueError("trailing bytes after the metadata documents")
    return out


class ChangeSet:
    """The changes of one session (or of several, merged).

    What :meth:`~icechunk_dask.Session.changes` returns and
    :meth:`~icechunk_dask.Session.merge` accepts: a compact, picklable record
    that a Dask task returns instead of its session. Users rarely build one;
    ``ChangeSet(repo_id, base)`` is an empty record. ``len(record)`` counts the
    changed keys (and deleted prefixes); an empty record is false.

    Parameters
    ----------
    repo_id : str
        Id of the repository the changes belong to.
    base : str
        Snapshot id the changes were made on.
    """

    __slots__ = (
        "base",
        "chunks",
        "cleared",
        "jobs",
        "layers",
        "meta",
        "prev_chunks",
        "prev_meta",
        "repo_id",
        "tasks",
        "writers",
    )

    def __init__(self, repo_id: str, base: str) -> None:
        self.repo_id = repo_id
        self.base = base
        self.meta: dict[str, bytes | None] = {}
        self.chunks: dict[str, ChunkRef | None] = {}
        self.prev_meta: dict[str, bytes | None] = {}
        self.prev_chunks: dict[str, ChunkRef | None] = {}
        self.writers: set[str] = set()
        #: prefixes under which every *committed* key is deleted (``delete_dir``); chunk
        #: and metadata entries of this change set are applied after the deletion
        self.cleared: set[str] = set()
        #: ids of the Dask write jobs whose whole result this record holds
        self.jobs: set[str] = set()
        #: keys of the rerouted Dask tasks whose changes this record holds
        self.tasks: set[str] = set()
        #: pre-built manifest layers by node (boxes of references stored by workers),
        #: older than the chunk entries of the same box
        self.layers: dict[str, NodeManifests] = {}

    # -- inspection -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.meta) + self.nchunks + len(self.cleared)

    def __bool__(self) -> bool:
        return bool(self.meta or self.chunks or self.cleared or self.layers)

    @property
    def nchunks(self) -> int:
        """Number of chunk keys written or deleted (pre-built layers' entries counted)."""
        return len(self.chunks) + layered_refs(self.layers)

    def __repr__(self) -> str:
        return (
            f"<ChangeSet base={self.base} metadata={len(self.meta)} chunks={self.nchunks} "
            f"cleared={len(self.cleared)} writers={len(self.writers)}>"
        )

    def copy(self) -> ChangeSet:
        """Return an independent copy.

        Returns
        -------
        ChangeSet
            A copy whose changes can be modified without touching this one.
        """
        out = ChangeSet(self.repo_id, self.base)
        out.meta = dict(self.meta)
        out.chunks = dict(self.chunks)
        out.prev_meta = dict(self.prev_meta)
        out.prev_chunks = dict(self.prev_chunks)
        out.writers = set(self.writers)
        out.cleared = set(self.cleared)
        out.jobs = set(self.jobs)
        out.tasks = set(self.tasks)
        out.layers = dict(self.layers)
        return out

    # -- merging --------------------------------------------------------------

    def check_compatible(self, other: ChangeSet) -> None:
        """Refuse records of another repository or another base snapshot.

        Parameters
        ----------
        other : ChangeSet
            The record to be merged into this one.

        Raises
        ------
        InvalidInputError
            If ``other`` belongs to another repository (kind
            ``foreign-session``) or was made on another base snapshot (kind
            ``stale-session``).
        """
        if other.repo_id != self.repo_id:
            raise InvalidInputError(
                "cannot merge changes from another repository "
                f"(repository {other.repo_id}, this session's is {self.repo_id}); only "
                "sessions forked from (or pickled copies of) this session can be merged",
                kind=ErrorKind.FOREIGN_SESSION,
            )
        if other.base != self.base:
            raise InvalidInputError(
                f"cannot merge changes made on snapshot {other.base} into a session based on "
                f"snapshot {self.base}: they were made on a different version of the data. "
                "Fork the session you want to merge into (session.fork()) and redo the writes "
                "from that fork",
                kind=ErrorKind.STALE_SESSION,
            )

    def update(self, other: ChangeSet) -> None:
        """Merge ``other`` into this change set in place.

        A key changed on both sides must end with the same value, unless
        ``other`` changed it on top of exactly this side's value (a fork
        writing over its parent's uncommitted write). Nothing is modified if
        a conflict is found.

        Parameters
        ----------
        other : ChangeSet
            The record to merge (left unchanged).

        Raises
        ------
        InvalidInputError
            If ``other`` belongs to another repository or base snapshot (see
            :meth:`check_compatible`), or both records change a box that one
            of them holds as a pre-built manifest layer (kind
            ``layer-collision``: merge through ``Session.merge``, which loads
            those layers first).
        ConflictError
            If both sides wrote different bytes to the same chunk or different
            metadata documents to the same key (kind ``merge-conflict``; the
            error's ``conflicts`` name the keys).
        """
        self.check_compatible(other)
        collided = colliding_boxes(self, other)
        if collided:
            shown = ", ".join(f"{n or '/'} box {min(b)!r}" for n, b in collided.items())
            raise InvalidInputError(
                "cannot merge these change records without reading their pre-built manifests: "
                f"both change {shown}. Merge them with Session.merge, which loads those first",
                kind=ErrorKind.LAYER_COLLISION,
            )
        conflicts: list[Conflict] = []
        meta_updates: dict[str, bytes | None] = {}
        for key, new in other.meta.items():
            if key in self.meta:
                cur = self.meta[key]
                if cur == new:
                    continue
                if key in other.prev_meta and other.prev_meta[key] == cur:
                    meta_updates[key] = new
                    continue
                conflicts.append(
                    Conflict(
                        ConflictType.ZARR_METADATA_DOUBLE_UPDATE,
                        "/" + key.rpartition("/")[0],
                        keys=(key,),
                        description="metadata written differently by two sessions",
                    )
                )
            else:
                meta_updates[key] = new
        chunk_updates: dict[str, ChunkRef | None] = {}
        mine = self.chunks
        theirs_prev = other.prev_chunks
        for key, ref in other.chunks.items():
            cur = mine.get(key, _MISSING)
            if cur is _MISSING:
                chunk_updates[key] = ref
            elif not same_chunk(cur, ref):
                if key in theirs_prev and same_chunk(theirs_prev[key], cur):
                    chunk_updates[key] = ref
                else:
                    conflicts.append(
                        Conflict(
                            ConflictType.CHUNK_DOUBLE_UPDATE,
                            "/" + key,
                            keys=(key,),
                            description="chunk written with different bytes by two sessions",
                        )
                    )
        if conflicts:
            shown = ", ".join(f"{c.keys[0]!r} ({c.description})" for c in conflicts[:10])
            more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise ConflictError(
                f"cannot merge: {len(conflicts)} key(s) were changed differently by the merged "
                f"sessions: {shown}{more}. Each chunk must be written by exactly one task; "
                "give every task a disjoint region aligned to whole chunks",
                conflicts=conflicts,
                kind=ErrorKind.MERGE_CONFLICT,
            )
        for key in meta_updates:
            if key not in self.meta and key in other.prev_meta:
                self.prev_meta[key] = other.prev_meta[key]
        for key, prev in theirs_prev.items():
            # keys of theirs in pre-built layers keep their previous value too (no
            # collision: this side does not have them)
            if key not in mine and (key in chunk_updates or key not in other.chunks):
                self.prev_chunks.setdefault(key, prev)
        self.meta.update(meta_updates)
        mine.update(chunk_updates)
        self.writers |= other.writers
        self.cleared |= other.cleared
        self.jobs |= other.jobs
        self.tasks |= other.tasks
        for node, nm in other.layers.items():
            mine_nm = self.layers.get(node)
            if mine_nm is None:
                self.layers[node] = nm
            else:  # disjoint boxes of one layout (colliding_boxes checked it)
                boxes = {**mine_nm.boxes, **nm.boxes}
                self.layers[node] = NodeManifests(mine_nm.encoding, mine_nm.split, boxes)

    @classmethod
    def merge_all(cls, records: Iterable[ChangeSet]) -> ChangeSet:
        """Merge change records into a new one (inputs are left untouched).

        Parameters
        ----------
        records : iterable of ChangeSet
            At least one change record, all of the same repository and base.

        Returns
        -------
        ChangeSet
            The union of the records.

        Raises
        ------
        InvalidInputError
            If there are no records or they are of different repositories/bases.
        ConflictError
            If two records changed the same key differently.
        """
        it = iter(records)
        try:
            first = next(it)
        except StopIteration:
            raise InvalidInputError("merge_all needs at least one change record") from None
        out = first.copy()
        for rec in it:
            out.update(rec)
        return out

    # -- wire form ----------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Return the compact, checksummed wire form (what pickling sends).

        Returns
        -------
        bytes
            A compressed record that :meth:`from_bytes` reads back.
        """
        header: dict[str, Any] = {
            "repo": self.repo_id,
            "base": self.base,
            "writers": sorted(self.writers),
            "cleared": sorted(self.cleared),
            "jobs": sorted(self.jobs),
            "tasks": sorted(self.tasks),
        }
        if self.layers:
            header["layers"] = {n: nm.to_json() for n, nm in self.layers.items()}
        prev = self.prev_chunks
        # metadata documents go into the (compressed) body: JSON compresses well
        body = b"".join(
            (
                _framed(_encode_docs(self.meta)),
                _framed(_encode_docs(self.prev_meta)),
                len(prev).to_bytes(8, "little"),
                _framed(encode_refs(list(prev), list(prev.values()))),
                encode_refs(list(self.chunks), list(self.chunks.values())),
            )
        )
        return encode_object(ObjectKind.SCRATCH, {"changes": header}, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChangeSet:
        """Parse :meth:`to_bytes` output.

        Parameters
        ----------
        data : bytes
            What :meth:`to_bytes` returned.

        Returns
        -------
        ChangeSet
            The record.

        Raises
        ------
        CorruptObjectError
            If ``data`` is truncated, fails its checksum or is not a change record.
        FormatVersionError
            If it was written by a newer icechunk_dask.
        """
        header, body = decode_object(data, _WIRE_KEY, ObjectKind.SCRATCH)
        h = header["changes"]
        out = cls(h["repo"], h["base"])
        out.writers = set(h["writers"])
        out.cleared = set(h.get("cleared", ()))
        out.jobs = set(h.get("jobs", ()))
        out.tasks = set(h.get("tasks", ()))
        try:
            out.layers = {
                str(n): NodeManifests.from_json(doc) for n, doc in h.get("layers", {}).items()
            }
        except (KeyError, TypeError, ValueError, IndexError) as e:  # pragma: no cover - crc
            raise InvalidInputError(f"malformed change record: {e!r}") from e
        view = memoryview(body)
        sections = []
        pos = 0
        for _ in range(2):
            size = int.from_bytes(view[pos : pos + 8], "little")
            sections.append(view[pos + 8 : pos + 8 + size])
            pos += 8 + size
        try:
            out.meta, out.prev_meta = (_decode_docs(v) for v in sections)
        except (ValueError, UnicodeDecodeError) as e:  # pragma: no cover - the crc checked it
            raise InvalidInputError(f"malformed change record: {e}") from e
        n_prev = int.from_bytes(view[pos : pos + 8], "little")
        plen = int.from_bytes(view[pos + 8 : pos + 16], "little")
        if n_prev:
            keys, refs = decode_refs(bytes(view[pos + 16 : pos + 16 + plen]))
            out.prev_chunks = dict(zip(keys, refs, strict=True))
        keys, refs = decode_refs(bytes(view[pos + 16 + plen :]))
        out.chunks = dict(zip(keys, refs, strict=True))
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChangeSet.from_bytes, (self.to_bytes(),))


def layered_refs(layers: dict[str, NodeManifests]) -> int:
    """Entries (references and tombstones) held by pre-built layers."""
    return sum(layer.size for nm in layers.values() for box in nm.boxes.values() for layer in box)


def boxes_of_keys(keys: list[str], node: str, nm: NodeManifests) -> dict[str, list[str]]:
    """Group ``keys`` (whole keys, all under node ``node``) by their box in ``nm``'s layout."""
    head = f"{node}/" if node else ""
    suffixes = [k[len(head) :] for k in keys]
    if nm.encoding is None or nm.split is None:
        return {FLAT: keys} if keys else {}
    names, order, bounds = group_boxes(suffixes, nm.encoding, nm.split)
    idx = order.tolist()
    return {name: [keys[i] for i in idx[bounds[j] : bounds[j + 1]]] for j, name in enumerate(names)}


def _keys_under(chunks: dict[str, Any], node: str) -> list[str]:
    if not node:
        return list(chunks)
    head = node + "/"
    return [k for k in chunks if k.startswith(head)]


def colliding_boxes(a: ChangeSet, b: ChangeSet) -> dict[str, set[str]]:
    """Boxes that one record holds as pre-built layers and the other also changes.

    Such boxes cannot be merged without loading the layers (the order of the
    entries and the conflict check need the keys). A node whose layers have
    another layout on each side collides in all its boxes.

    Parameters
    ----------
    a, b : ChangeSet
        The records to be merged.

    Returns
    -------
    dict of str to set of str
        Node -> boxes; empty when the records can be merged as they are.
    """
    out: dict[str, set[str]] = {}
    for mine, theirs in ((a, b), (b, a)):
        for node, nm in mine.layers.items():
            hit = set()
            other_nm = theirs.layers.get(node)
            if other_nm is not None:
                if (other_nm.encoding, other_nm.split) != (nm.encoding, nm.split):
                    hit = set(nm.boxes) | set(other_nm.boxes)
                else:
                    hit = set(nm.boxes) & set(other_nm.boxes)
            keys = _keys_under(theirs.chunks, node)
            if keys:
                hit |= set(boxes_of_keys(keys, node, nm)) & set(nm.boxes)
            if hit:
                out.setdefault(node, set()).update(hit)
    return out


def _framed(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b


_MISSING: Any = object()
