"""Maintenance: ``expire``, ``gc``, ``verify`` and ``du``."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

from icechunk_dask._expire import expire_snapshots
from icechunk_dask._gc import GC_KINDS, garbage_collect
from icechunk_dask._reach import KINDS
from icechunk_dask._sync import run
from icechunk_dask._usage import storage_usage
from icechunk_dask._verify import verify_repository
from icechunk_dask.cli import CliError
from icechunk_dask.cli._format import emit, size, table, when
from icechunk_dask.cli._open import open_assets

__all__ = ["du", "expire", "gc", "parse_time", "verify"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])")
_SHOWN = 20


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A time given on the command line: ISO 8601, or a duration before now.

    Parameters
    ----------
    text : str
        ``2026-11-01``, ``2026-11-01T12:00:00+01:00`` (no zone: UTC), ``now``,
        or a duration such as ``7d``, ``12h``, ``90m``, ``30s``, ``2w``, ``1d12h``.
    now : datetime or None
        The present (default: the clock).

    Returns
    -------
    datetime
        A timezone-aware time.

    Raises
    ------
    CliError
        If ``text`` is neither.
    """
    now = now if now is not None else datetime.now(UTC)
    rest, seconds = text.strip(), 0.0
    if rest == "now":
        return now
    while m := _DURATION.match(rest):
        seconds += float(m[1]) * _UNITS[m[2]]
        rest = rest[m.end() :]
    if not rest and seconds >= 0 and text.strip():
        return now - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{text!r} is not a time: give an ISO time (2026-11-01, 2026-11-01T12:00:00Z) or "
            "a duration before now (7d, 12h, 90m, 30s, 2w, 1d12h)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def expire(args: argparse.Namespace) -> int:
    """``icechunk-dask expire LOCATION --older-than T``: expire old snapshots."""
    cutoff = parse_time(args.older_than)
    repo = open_assets(args)
    expired = run(
        expire_snapshots(
            repo,
            cutoff,
            delete_expired_branches=args.delete_expired_branches,
            delete_expired_tags=args.delete_expired_tags,
        )
    )
    doc = {"older_than": cutoff.isoformat(), "expired": sorted(expired)}
    lines = [f"expired {len(expired)} snapshot(s) committed before {when(cutoff)}"]
    lines += [f"  {s}" for s in sorted(expired)[:_SHOWN]]
    if len(expired) > _SHOWN:
        lines.append(f"  ... and {len(expired) - _SHOWN} more (--json lists them all)")
    if expired:
        lines.append(f"run `icechunk-dask gc {args.location} --older-than ...` to reclaim space")
    return emit(args, doc, lines)


def gc(args: argparse.Namespace) -> int:
    """``icechunk-dask gc LOCATION --older-than T [--dry-run]``: garbage-collect."""
    cutoff = parse_time(args.older_than)
    repo = open_assets(args)
    summary = run(garbage_collect(repo, cutoff, dry_run=args.dry_run))
    verb = "would delete" if args.dry_run else "deleted"
    rows = [["kind", verb, "bytes", "kept (reachable)", "kept (recent)"]]
    for kind in GC_KINDS:
        d, r, n = summary.deleted[kind], summary.reachable[kind], summary.recent[kind]
        if d.objects or r.objects or n.objects:
            rows.append([kind, str(d.objects), size(d.bytes), str(r.objects), str(n.objects)])
    lines = [
        (
            f"{verb} {summary.objects_deleted} object(s), {size(summary.bytes_deleted)}, "
            f"unreachable and written before {when(summary.cutoff)}"
        ),
        *(table(rows) if len(rows) > 1 else []),
    ]
    return emit(args, summary.to_dict(), lines)


def verify(args: argparse.Namespace) -> int:
    """``icechunk-dask verify LOCATION [--chunks] [--all]``: exit 1 on any problem."""
    repo = open_assets(args)
    report = run(verify_repository(repo, all_snapshots=args.all, chunks=args.chunks))
    checked = (
        f"checked {report.refs} ref(s), {report.snapshots} snapshot(s), {report.manifests} "
        f"manifest(s), {report.chunk_objects} chunk object(s), {report.chunk_refs} chunk "
        "reference(s)" + (f", read {report.chunks_read} chunk(s)" if args.chunks else "")
    )
    lines = [checked]
    if report.ok:
        lines.append("no problems found")
    else:
        lines.append(f"{report.problems_total} problem(s):")
        for p in report.problems:
            by = f" (needed by {p.referenced_by})" if p.referenced_by else ""
            lines.append(f"  {p.kind}: {p.key}{by}: {p.message}")
        if report.problems_total > len(report.problems):
            lines.append(f"  ... and {report.problems_total - len(report.problems)} more")
    emit(args, report.to_dict(), lines)
    return 0 if report.ok else 1


def du(args: argparse.Namespace) -> int:
    """``icechunk-dask du LOCATION``: objects and bytes by kind, reachable or not."""
    repo = open_assets(args)
    report = run(storage_usage(repo))
    rows = [["kind", "reachable", "bytes", "unreachable", "bytes"]]
    for kind in KINDS:
        r, u = report.reachable[kind], report.unreachable[kind]
        if r.objects or u.objects:
            rows.append([kind, str(r.objects), size(r.bytes), str(u.objects), size(u.bytes)])
    total = report.total
    unreachable = sum(c.bytes for c in report.unreachable.values())
    lines = [
        (
            f"{total.objects} object(s), {size(total.bytes)}; {len(report.refs)} ref(s), "
            f"{report.snapshots} snapshot(s) in their histories"
        ),
        *table(rows),
        f"unreachable: {size(unreachable)} (`icechunk-dask gc` deletes what is old enough)",
    ]
    return emit(args, report.to_dict(), lines)
