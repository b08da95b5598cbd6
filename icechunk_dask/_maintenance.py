"""Maintenance of a :class:`~icechunk_dask.Repository` (its lifecycle methods).

A mixin of :class:`~icechunk_dask.Repository`: expiring snapshots, garbage
collection, verification and the storage usage report, with Icechunk's
names (:mod:`icechunk_dask._expire`, :mod:`icechunk_dask._gc`,
:mod:`icechunk_dask._verify`, :mod:`icechunk_dask._usage`).
"""

from __future__ import annotations

from datetime import datetime

from icechunk_dask._assets import AssetManager
from icechunk_dask._expire import expire_snapshots
from icechunk_dask._gc import GCSummary, garbage_collect
from icechunk_dask._sync import run
from icechunk_dask._usage import UsageReport, storage_usage
from icechunk_dask._verify import VerifyReport, verify_repository

__all__ = ["MaintenanceMethods"]


class MaintenanceMethods:
    """Lifecycle methods of :class:`~icechunk_dask.Repository`."""

    _assets: AssetManager

    # -- maintenance ------------------------------------------------------------

    def expire_snapshots(
        self,
        older_than: datetime,
        *,
        delete_expired_branches: bool = False,
        delete_expired_tags: bool = False,
    ) -> set[str]:
        """Expire the snapshots committed before ``older_than`` (Icechunk's name and semantics).

        Walks the history of every branch and tag. A snapshot committed before
        ``older_than`` expires unless a branch or tag points at it or it is the
        repository's first snapshot. An expired snapshot is skipped by every
        history walk (:meth:`~icechunk_dask.Repository.ancestry`: the history continues with its nearest
        ancestor that is not expired), reading it is an
        :class:`~icechunk_dask.ExpiredSnapshotError`, and :meth:`garbage_collect`
        can then delete what only it needed. Sessions already open on it keep
        working until then. Snapshots are never rewritten: expiry is recorded
        by a create-only marker per snapshot.

        Parameters
        ----------
        older_than : datetime
            Snapshots committed before this time expire (naive means UTC).
        delete_expired_branches : bool
            First delete the branches (except ``main``) whose tip is older than
            ``older_than`` (each only while it still points there); their
            snapshots then expire too.
        delete_expired_tags : bool
            The same for tags.

        Returns
        -------
        set of str
            The ids of the snapshots this call expired.

        Raises
        ------
        InvalidInputError
            If ``older_than`` is not a datetime.
        """
        return run(
            expire_snapshots(
                self._assets,
                older_than,
                delete_expired_branches=delete_expired_branches,
                delete_expired_tags=delete_expired_tags,
            )
        )

    def garbage_collect(
        self, delete_object_older_than: datetime, *, dry_run: bool = False
    ) -> GCSummary:
        """Delete the objects no branch or tag needs that were written before a cutoff.

        An object is deleted only if it is unreachable from every branch tip
        and tag (through their histories, expired snapshots excluded) **and**
        was stored before ``delete_object_older_than``. Writers running
        meanwhile are safe as long as the cutoff is before they started: a
        session's chunks and a commit's objects are all newer than that. A
        chunk object holding several chunks (a pack) is kept whole while any
        reachable reference points into it. Also deleted: old records of
        failed or abandoned write jobs, scratch objects, session markers and
        the temporary files of interrupted writes.

        Parameters
        ----------
        delete_object_older_than : datetime
            The cutoff (naive means UTC; a time in the future counts as now).
            Choose it before the start of the longest session still running.
        dry_run : bool
            Count what would be deleted, delete nothing.

        Returns
        -------
        GCSummary
            Objects and bytes deleted (or that would be), by kind.

        Raises
        ------
        CorruptObjectError
            If a reachable object is missing or damaged: nothing is deleted then.
        """
        return run(garbage_collect(self._assets, delete_object_older_than, dry_run=dry_run))

    def verify(self, *, all_snapshots: bool = False, chunks: bool = False) -> VerifyReport:
        """Check that every object the history needs exists, decodes and is in its place.

        Parameters
        ----------
        all_snapshots : bool
            Check every stored snapshot, not only those reachable from branches and tags.
        chunks : bool
            Also read every chunk and check it against its checksum.

        Returns
        -------
        VerifyReport
            What was checked and the problems found (``report.ok`` when none).
        """
        return run(verify_repository(self._assets, all_snapshots=all_snapshots, chunks=chunks))

    def storage_usage(self) -> UsageReport:
        """Objects and bytes stored, by kind, reachable from branches and tags or not.

        Returns
        -------
        UsageReport
            Per kind: reachable and unreachable objects and bytes.
        """
        return run(storage_usage(self._assets))
