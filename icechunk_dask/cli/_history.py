"""History and refs: ``log``, ``branches``, ``tags``, ``branch ...``, ``tag ...``."""

from __future__ import annotations

import argparse
from datetime import datetime

from icechunk_dask._inspect import ancestry, labels, resolve_ref
from icechunk_dask._refs import create_tag as _create_tag
from icechunk_dask._refs import delete_tag as _delete_tag
from icechunk_dask._refs import set_branch
from icechunk_dask._sync import run
from icechunk_dask.cli._format import emit, table, when
from icechunk_dask.cli._open import open_assets

__all__ = [
    "create_branch",
    "create_tag",
    "delete_branch",
    "delete_tag",
    "list_branches",
    "list_tags",
    "log",
    "reset_branch",
]


def log(args: argparse.Namespace) -> int:
    """``icechunk-dask log``: the ancestry of a REF, newest first."""
    repo = open_assets(args)
    start = resolve_ref(repo, args.ref)
    names = labels(repo)
    entries = []
    for i, snap in enumerate(ancestry(repo, start)):
        if args.max_count is not None and i >= args.max_count:
            break
        entries.append(snap)
    doc = [
        {
            "id": s.id,
            "parent_id": s.parent_id,
            "written_at": s.written_at,
            "message": s.message,
            "metadata": s.metadata,
            "refs": names.get(s.id, []),
        }
        for s in entries
    ]
    lines = []
    for s in entries:
        refs = f" ({', '.join(names[s.id])})" if s.id in names else ""
        lines.append(f"{s.id}  {when(datetime.fromisoformat(s.written_at))}{refs}  {s.message}")
    return emit(args, doc, lines)


def _listing(args: argparse.Namespace, kind: str) -> int:
    repo = open_assets(args)
    if kind == "branches":
        pairs = [(n, run(repo.lookup_branch(n))[1]) for n in sorted(run(repo.list_branches()))]
    else:
        pairs = [(n, run(repo.lookup_tag(n))) for n in sorted(run(repo.list_tags()))]
    rows = [(n, s, run(repo.get_snapshot(s))) for n, s in pairs]
    doc = [
        {"name": n, "snapshot_id": s, "written_at": snap.written_at, "message": snap.message}
        for n, s, snap in rows
    ]
    lines = [
        [n, s, when(datetime.fromisoformat(snap.written_at)), snap.message] for n, s, snap in rows
    ]
    return emit(args, doc, table(lines, indent="") if rows else ["(none)"])


def list_branches(args: argparse.Namespace) -> int:
    """``icechunk-dask branches``."""
    return _listing(args, "branches")


def list_tags(args: argparse.Namespace) -> int:
    """``icechunk-dask tags``."""
    return _listing(args, "tags")


def _done(args: argparse.Namespace, what: str, doc: dict[str, object]) -> int:
    return emit(args, doc, [what])


def create_branch(args: argparse.Namespace) -> int:
    """``icechunk-dask branch create LOCATION NAME [REF]``."""
    repo = open_assets(args)
    target = resolve_ref(repo, args.ref)
    run(set_branch(repo, args.name, target, create=True))
    return _done(
        args,
        f"created branch {args.name} at {target}",
        {"branch": args.name, "snapshot_id": target},
    )


def reset_branch(args: argparse.Namespace) -> int:
    """``icechunk-dask branch reset LOCATION NAME REF [--from SNAPSHOT]``."""
    repo = open_assets(args)
    target = resolve_ref(repo, args.ref)
    run(set_branch(repo, args.name, target, create=False, expected=args.expected))
    return _done(
        args, f"branch {args.name} now at {target}", {"branch": args.name, "snapshot_id": target}
    )


def delete_branch(args: argparse.Namespace) -> int:
    """``icechunk-dask branch delete LOCATION NAME [--from SNAPSHOT]``."""
    from icechunk_dask._exceptions import InvalidInputError

    if args.name == "main":
        raise InvalidInputError("the 'main' branch cannot be deleted")
    repo = open_assets(args)
    run(set_branch(repo, args.name, None, create=False, expected=args.expected))
    return _done(args, f"deleted branch {args.name}", {"deleted_branch": args.name})


def create_tag(args: argparse.Namespace) -> int:
    """``icechunk-dask tag create LOCATION NAME [REF]``."""
    repo = open_assets(args)
    target = resolve_ref(repo, args.ref)
    run(_create_tag(repo, args.name, target))
    return _done(
        args, f"created tag {args.name} at {target}", {"tag": args.name, "snapshot_id": target}
    )


def delete_tag(args: argparse.Namespace) -> int:
    """``icechunk-dask tag delete LOCATION NAME [--from SNAPSHOT]``."""
    repo = open_assets(args)
    run(_delete_tag(repo, args.name, expected=args.expected))
    return _done(args, f"deleted tag {args.name}", {"deleted_tag": args.name})
