"""Looking inside snapshots: ``show`` and ``diff``."""

from __future__ import annotations

import argparse
import asyncio
import json

from icechunk_dask._diff import Diff, diff_snapshots
from icechunk_dask._inspect import SnapshotSummary, labels, resolve_ref, snapshot_summary
from icechunk_dask._sync import run
from icechunk_dask.cli._format import emit, shape, size, table, when
from icechunk_dask.cli._open import open_assets

__all__ = ["diff", "show"]


def _show_lines(s: SnapshotSummary, names: list[str]) -> list[str]:
    refs = f"  ({', '.join(names)})" if names else ""
    lines = [
        f"snapshot  {s.id}{refs}",
        f"parent    {s.parent_id or '-'}",
        f"written   {when(s.written_at)}",
        f"message   {s.message}",
    ]
    if s.metadata:
        lines.append(f"metadata  {json.dumps(s.metadata, sort_keys=True)}")
    lines.append(f"groups    {', '.join(g or '/' for g in s.groups) or '-'}")
    lines.append(f"arrays    {len(s.arrays)}, {s.chunks_stored} chunks stored")
    if s.arrays:
        rows = [["path", "shape", "dtype", "chunk shape", "chunks", "size", "dims"]]
        for a in s.arrays:
            dims = ", ".join(str(d) for d in a.dimension_names) if a.dimension_names else "-"
            rows.append(
                [
                    a.path,
                    shape(a.shape),
                    a.dtype,
                    shape(a.chunk_shape),
                    f"{a.chunks_stored}/{a.chunks_total}",
                    size(a.nbytes),
                    dims,
                ]
            )
        lines += table(rows)
    return lines


def show(args: argparse.Namespace) -> int:
    """``icechunk-dask show``: what a snapshot holds."""
    repo = open_assets(args)
    summary = snapshot_summary(repo, resolve_ref(repo, args.ref))
    names = labels(repo).get(summary.id, [])
    return emit(args, {**summary.to_dict(), "refs": names}, _show_lines(summary, names))


def _diff_lines(
    d: Diff, a: SnapshotSummary, b: SnapshotSummary, args: argparse.Namespace
) -> list[str]:
    lines = [f"from  {a.id}  ({args.a})", f"to    {b.id}  ({args.b})"]
    if d.is_empty():
        return [*lines, "no changes"]
    shapes_a = {"/" + x.path: x.shape for x in a.arrays}
    shapes_b = {"/" + x.path: x.shape for x in b.arrays}
    for label, items in (
        ("new groups", d.new_groups),
        ("deleted groups", d.deleted_groups),
        ("updated groups", d.updated_groups),
        ("new arrays", d.new_arrays),
        ("deleted arrays", d.deleted_arrays),
    ):
        if items:
            lines.append(f"{label + ':':16}{', '.join(sorted(items))}")
    if d.updated_arrays:
        lines.append("updated arrays:")
        for p in sorted(d.updated_arrays):
            old, new = shapes_a.get(p), shapes_b.get(p)
            what = (
                f"shape {shape(old)} -> {shape(new)}"
                if old and new and old != new
                else "metadata changed"
            )
            lines.append(f"  {p}: {what}")
    if d.updated_chunks:
        total = sum(len(c) for c in d.updated_chunks.values())
        lines.append(f"chunks: {total} changed")
        lines += table([[p, f"{len(c)} chunks"] for p, c in sorted(d.updated_chunks.items())])
    if d.other_keys:
        lines.append(f"other keys: {len(d.other_keys)} changed")
    return lines


def diff(args: argparse.Namespace) -> int:
    """``icechunk-dask diff``: what changed from A to B."""
    repo = open_assets(args)
    a, b = resolve_ref(repo, args.a), resolve_ref(repo, args.b)

    async def go() -> Diff:
        old, new = await asyncio.gather(repo.get_snapshot(a), repo.get_snapshot(b))
        return await diff_snapshots(repo, old, new)

    d = run(go())
    lines = _diff_lines(d, snapshot_summary(repo, a), snapshot_summary(repo, b), args)
    return emit(args, {"from": a, "to": b, **d.to_dict()}, lines)
