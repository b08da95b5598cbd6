"""Storage usage: objects and bytes by kind, reachable from branches and tags or not.

One streamed listing of the whole repository, classified by key
(:func:`~icechunk_dask._reach.kind_of`) and checked against what the live
refs reach (:mod:`icechunk_dask._reach`). Branch logs, tags, expiry markers
and ``config.json`` always count as reachable (they are never collected);
scratch objects, session markers, job records and temporary files never do
(garbage collection deletes them once they are old). The *unreachable*
columns are therefore what ``garbage_collect`` with a cutoff of now would
delete, give or take the job records still in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icechunk_dask._assets import AssetManager
from icechunk_dask._reach import KINDS, KindCount, kind_of, reachable
from icechunk_dask.storage import ObjectPage

__all__ = ["UsageReport", "storage_usage"]

_ALWAYS = frozenset({"refs", "expiry_markers", "config"})
_BY_ID = frozenset({"snapshots", "transaction_logs", "manifests"})


def _counts() -> dict[str, KindCount]:
    return {k: KindCount() for k in KINDS}


@dataclass(frozen=True)
class UsageReport:
    """What :meth:`~icechunk_dask.Repository.storage_usage` found.

    Each parameter is also an attribute of the same name.

    Parameters
    ----------
    reachable : dict of str to KindCount
        Per kind, the objects that branches and tags need (and the refs themselves).
    unreachable : dict of str to KindCount
        Per kind, the objects nothing needs: garbage collection deletes them once
        they are older than its cutoff.
    refs : dict of str to str
        The live refs (``"branch main"``, ``"tag v1"``) and the snapshots they name.
    snapshots : int
        Snapshots reachable from them.
    """

    reachable: dict[str, KindCount] = field(default_factory=_counts)
    unreachable: dict[str, KindCount] = field(default_factory=_counts)
    refs: dict[str, str] = field(default_factory=dict)
    snapshots: int = 0

    @property
    def total(self) -> KindCount:
        """Every object stored."""
        out = KindCount()
        for counts in (self.reachable, self.unreachable):
            for c in counts.values():
                out.objects += c.objects
                out.bytes += c.bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form.

        Returns
        -------
        dict
            The report as plain JSON types.
        """
        return {
            "refs": self.refs,
            "snapshots": self.snapshots,
            "total": self.total.to_dict(),
            "kinds": {
                k: {
                    "reachable": self.reachable[k].to_dict(),
                    "unreachable": self.unreachable[k].to_dict(),
                }
                for k in KINDS
            },
        }


async def storage_usage(assets: AssetManager) -> UsageReport:
    """Count every stored object by kind, reachable or not (see the module docstring).

    Raises
    ------
    CorruptObjectError
        If a reachable object is missing or damaged.
    """
    reach = await reachable(assets)
    report = UsageReport(refs=reach.refs, snapshots=len(reach.snapshots))

    def classify(page: ObjectPage) -> None:
        kinds = np.array([kind_of(key) for key in page.keys])
        for kind in np.unique(kinds).tolist():
            of_kind = kinds == kind
            if kind in _ALWAYS:
                needed = of_kind
            else:
                needed = np.zeros(len(page), bool)
                at = np.flatnonzero(of_kind).tolist()
                if kind == "chunks":
                    needed[at] = reach.has_chunks([page.keys[i][len("chunks/") :] for i in at])
                elif kind in _BY_ID:
                    needed[at] = [reach.keeps(kind, page.keys[i]) for i in at]
            report.reachable[kind].add_all(page.sizes[needed])
            report.unreachable[kind].add_all(page.sizes[of_kind & ~needed])

    async for page in assets.storage.list_object_pages(""):
        classify(page)
    async for page in assets.storage.list_temporary_pages():
        report.unreachable["temporary"].add_all(page.sizes)
    return report
