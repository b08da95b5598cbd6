"""Expiry markers: ``expired/<snapshot id>``, written once by ``expire_snapshots``.

Snapshots are immutable, so expiring one cannot rewrite its children's
parent: a create-only marker records it instead. The marker keeps what a
history walk needs once the snapshot itself may be gone (garbage
collection deletes expired snapshots): the snapshot's own parent, and
``next``, the nearest ancestor that was not expired when it was marked, where
the visible history continues. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from icechunk_dask._exceptions import CorruptObjectError, ExpiredSnapshotError
from icechunk_dask.format._envelope import ObjectKind, decode_object, encode_object
from icechunk_dask.format._snapshot import key_id

__all__ = ["EXPIRED_PREFIX", "ExpiryMarker", "expiry_key"]

#: Where expiry markers live.
EXPIRED_PREFIX = "expired/"


def expiry_key(snapshot_id: str) -> str:
    """Key of the expiry marker of ``snapshot_id``."""
    return f"{EXPIRED_PREFIX}{snapshot_id}"


@dataclass(frozen=True, slots=True)
class ExpiryMarker:
    """A snapshot was expired: it is skipped by history walks and cannot be read.

    Attributes
    ----------
    snapshot_id : str
        The expired snapshot.
    parent_id : str or None
        Its parent, as the snapshot records it.
    next_id : str or None
        The nearest ancestor that was not expired when this marker was written:
        the history of a descendant continues there.
    snapshot_time : str
        When the snapshot was committed.
    expired_at : str
        When it was expired.
    """

    snapshot_id: str
    parent_id: str | None
    next_id: str | None
    snapshot_time: str
    expired_at: str

    def encode(self) -> bytes:
        """Return the stored form."""
        header = {
            "snapshot": self.snapshot_id,
            "parent": self.parent_id,
            "next": self.next_id,
            "snapshot_time": self.snapshot_time,
            "time": self.expired_at,
        }
        return encode_object(ObjectKind.EXPIRY, header, compress=False)

    def error(self) -> ExpiredSnapshotError:
        """The error reading the expired snapshot gives."""
        return ExpiredSnapshotError(
            f"snapshot {self.snapshot_id} (committed {self.snapshot_time}) was expired on "
            f"{self.expired_at} by expire_snapshots: it is no longer part of the history and "
            "its data may have been garbage-collected. Read a branch, a tag or a snapshot of "
            "the current history instead (repo.ancestry(branch='main') lists them)",
            snapshot_id=self.snapshot_id,
            expired_at=self.expired_at,
        )

    @classmethod
    def decode(cls, data: bytes, key: str) -> ExpiryMarker:
        """Parse the stored form and check that it is the marker ``key`` names.

        Raises
        ------
        CorruptObjectError
            If it is damaged or names another snapshot.
        """
        header, _ = decode_object(data, key, ObjectKind.EXPIRY)
        try:
            marker = cls(
                str(header["snapshot"]),
                None if header["parent"] is None else str(header["parent"]),
                None if header["next"] is None else str(header["next"]),
                str(header["snapshot_time"]),
                str(header["time"]),
            )
        except (KeyError, TypeError) as e:
            raise CorruptObjectError(f"object {key!r} cannot be decoded: {e!r}", key=key) from e
        if marker.snapshot_id != key_id(key):
            raise CorruptObjectError(
                f"object {key!r} is the expiry marker of {marker.snapshot_id!r}, not the one its "
                "key names: an object was copied over another; the repository is damaged",
                key=key,
            )
        return marker
