"""ChangeSet: what a session changed, as pure data, with conflict-checked merges.

A change set maps metadata keys to their new documents and chunk keys to
their new :data:`~icechunk_dask.format.ChunkRef` (``None`` = deleted). It also
remembers, for keys that a fork changed on top of its parent's *uncommitted*
value, that previous value (``prev``), so that merging the fork back into its
parent is a fast-forward rather than a conflict. ``writers`` names the
worker-side session copies whose writes the record carries.

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
    ChunkRef,
    ObjectKind,
    decode_object,
    decode_refs,
    encode_object,
    encode_refs,
    same_chunk,
)

__all__ = ["ChangeSet"]

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

    Parameters
    ----------
    repo_id
        Id of the repository the changes belong to.
    base
        Snapshot id the changes were made on.
    """

    __slots__ = (
        "base",
        "chunks",
        "cleared",
        "jobs",
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

    # -- inspection -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.meta) + len(self.chunks) + len(self.cleared)

    def __bool__(self) -> bool:
        return bool(self.meta or self.chunks or self.cleared)

    @property
    def nchunks(self) -> int:
        """Number of chunk keys written or deleted."""
        return len(self.chunks)

    def __repr__(self) -> str:
        return (
            f"<ChangeSet base={self.base} metadata={len(self.meta)} chunks={len(self.chunks)} "
            f"cleared={len(self.cleared)} writers={len(self.writers)}>"
        )

    def copy(self) -> ChangeSet:
        """Return an independent copy."""
        out = ChangeSet(self.repo_id, self.base)
        out.meta = dict(self.meta)
        out.chunks = dict(self.chunks)
        out.prev_meta = dict(self.prev_meta)
        out.prev_chunks = dict(self.prev_chunks)
        out.writers = set(self.writers)
        out.cleared = set(self.cleared)
        out.jobs = set(self.jobs)
        out.tasks = set(self.tasks)
        return out

    # -- merging --------------------------------------------------------------

    def check_compatible(self, other: ChangeSet) -> None:
        """Refuse records of another repository or another base snapshot.

        Raises
        ------
        InvalidInputError
            If ``other`` belongs to another repository or base snapshot.
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

        Raises
        ------
        InvalidInputError
            If ``other`` belongs to another repository or base snapshot.
        ConflictError
            If both sides wrote different bytes to the same chunk or different
            metadata documents to the same key.
        """
        self.check_compatible(other)
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
        for key in chunk_updates:
            if key not in mine and key in theirs_prev:
                self.prev_chunks[key] = theirs_prev[key]
        self.meta.update(meta_updates)
        mine.update(chunk_updates)
        self.writers |= other.writers
        self.cleared |= other.cleared
        self.jobs |= other.jobs
        self.tasks |= other.tasks

    @classmethod
    def merge_all(cls, records: Iterable[ChangeSet]) -> ChangeSet:
        """Merge change records into a new one (inputs are left untouched).

        Parameters
        ----------
        records
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
        """Return the compact, checksummed wire form."""
        header: dict[str, Any] = {
            "repo": self.repo_id,
            "base": self.base,
            "writers": sorted(self.writers),
            "cleared": sorted(self.cleared),
            "jobs": sorted(self.jobs),
            "tasks": sorted(self.tasks),
        }
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
        """Parse :meth:`to_bytes` output."""
        header, body = decode_object(data, _WIRE_KEY, ObjectKind.SCRATCH)
        h = header["changes"]
        out = cls(h["repo"], h["base"])
        out.writers = set(h["writers"])
        out.cleared = set(h.get("cleared", ()))
        out.jobs = set(h.get("jobs", ()))
        out.tasks = set(h.get("tasks", ()))
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


def _framed(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b


_MISSING: Any = object()
