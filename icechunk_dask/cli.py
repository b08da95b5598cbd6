"""The ``icechunk-dask`` command (also ``python -m icechunk_dask``).

::

    icechunk-dask demo [--path DIR] [--size-mb N] ...   the end-to-end demo
    icechunk-dask log PATH [REF] [-n N]                 ancestry of a branch (default main)
    icechunk-dask branches PATH                         branches and their tips
    icechunk-dask tags PATH                             tags and their snapshots
    icechunk-dask show PATH [REF]                       arrays, shapes, chunk counts
    icechunk-dask diff PATH A B                         what changed from A to B

``REF`` is a branch, a tag or a snapshot id, optionally with ``~N`` (``N``
commits back). Output is for people by default; ``--json`` prints one JSON
document for scripts. Errors go to standard error; the exit status is 0 on
success, 1 on an error and 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from icechunk_dask._exceptions import IcechunkDaskError
from icechunk_dask._inspect import (
    SnapshotDiff,
    SnapshotSummary,
    diff_snapshots,
    resolve_ref,
    snapshot_summary,
)
from icechunk_dask._repository import Repository
from icechunk_dask.storage import local_filesystem_storage

__all__ = ["main", "open_repository"]

PROG = "icechunk-dask"


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""


# -- opening ---------------------------------------------------------------------------------


def open_repository(path: str | Path) -> Repository:
    """Open the icechunk-dask repository in directory ``path``, with errors meant for people.

    Parameters
    ----------
    path
        A local directory.

    Returns
    -------
    Repository
        The opened repository.

    Raises
    ------
    CliError
        If ``path`` does not exist, is a file, or is not an icechunk-dask repository
        (the message says what it looks like instead: empty, plain Zarr, Icechunk, ...).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CliError(f"{path}: no such directory (create a repository with `{PROG} demo`)")
    if not p.is_dir():
        raise CliError(f"{path} is a file, not a repository directory")
    storage = local_filesystem_storage(p)
    if not Repository.exists(storage):
        raise CliError(f"{path} is not an icechunk-dask repository: {_what_is(p)}")
    return Repository.open(storage)


def _what_is(p: Path) -> str:
    names = {child.name for child in p.iterdir()}
    if not names:
        return "the directory is empty"
    if names & {"zarr.json", ".zgroup", ".zarray"}:
        return "it looks like a plain Zarr store; open it with zarr or xarray directly"
    if names & {"repo", "config.yaml"} and "snapshots" in names:
        return "it looks like an Icechunk repository; open it with the icechunk package"
    return f"it has no config.json ({len(names)} entries, e.g. {min(names)!r})"


# -- formatting ------------------------------------------------------------------------------


def _when(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _emit(args: argparse.Namespace, doc: Any, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(lines))
    return 0


def _labels(repo: Repository) -> dict[str, list[str]]:
    """Branch and tag names by the snapshot they point at (git's "decorations")."""
    out: dict[str, list[str]] = {}
    for b in sorted(repo.list_branches()):
        out.setdefault(repo.lookup_branch(b), []).append(b)
    for t in sorted(repo.list_tags()):
        out.setdefault(repo.lookup_tag(t), []).append(f"tag: {t}")
    return out


# -- commands --------------------------------------------------------------------------------


def _cmd_log(args: argparse.Namespace) -> int:
    repo = open_repository(args.path)
    start = resolve_ref(repo, args.ref)
    labels = _labels(repo)
    entries = []
    for i, info in enumerate(repo.ancestry(snapshot_id=start)):
        if args.max_count is not None and i >= args.max_count:
            break
        entries.append(info)
    doc = [
        {
            "id": e.id,
            "parent_id": e.parent_id,
            "written_at": e.written_at.isoformat(),
            "message": e.message,
            "metadata": e.metadata,
            "refs": labels.get(e.id, []),
        }
        for e in entries
    ]
    lines = []
    for e in entries:
        refs = f" ({', '.join(labels[e.id])})" if e.id in labels else ""
        lines.append(f"{e.id}  {_when(e.written_at)}{refs}  {e.message}")
    return _emit(args, doc, lines)


def _refs_listing(args: argparse.Namespace, kind: str) -> int:
    repo = open_repository(args.path)
    names, lookup = (
        (repo.list_branches(), repo.lookup_branch)
        if kind == "branches"
        else (repo.list_tags(), repo.lookup_tag)
    )
    rows = []
    for name in sorted(names):
        sid = lookup(name)
        rows.append((name, sid, next(repo.ancestry(snapshot_id=sid))))
    doc = [
        {"name": n, "snapshot_id": s, "written_at": i.written_at.isoformat(), "message": i.message}
        for n, s, i in rows
    ]
    table = [[n, s, _when(i.written_at), i.message] for n, s, i in rows]
    return _emit(args, doc, _table(table, indent="") if rows else ["(none)"])


def _cmd_branches(args: argparse.Namespace) -> int:
    return _refs_listing(args, "branches")


def _cmd_tags(args: argparse.Namespace) -> int:
    return _refs_listing(args, "tags")


def _show_lines(s: SnapshotSummary, labels: list[str]) -> list[str]:
    refs = f"  ({', '.join(labels)})" if labels else ""
    lines = [
        f"snapshot  {s.id}{refs}",
        f"parent    {s.parent_id or '-'}",
        f"written   {_when(s.written_at)}",
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
                    _shape(a.shape),
                    a.dtype,
                    _shape(a.chunk_shape),
                    f"{a.chunks_stored}/{a.chunks_total}",
                    _size(a.nbytes),
                    dims,
                ]
            )
        lines += _table(rows)
    return lines


def _cmd_show(args: argparse.Namespace) -> int:
    repo = open_repository(args.path)
    summary = snapshot_summary(repo, resolve_ref(repo, args.ref))
    labels = _labels(repo).get(summary.id, [])
    doc = {**summary.to_dict(), "refs": labels}
    return _emit(args, doc, _show_lines(summary, labels))


def _diff_lines(
    d: SnapshotDiff, a: SnapshotSummary, b: SnapshotSummary, args: argparse.Namespace
) -> list[str]:
    lines = [f"from  {d.from_id}  ({args.a})", f"to    {d.to_id}  ({args.b})"]
    if d.is_empty():
        return [*lines, "no changes"]
    shapes_a = {x.path: x.shape for x in a.arrays}
    shapes_b = {x.path: x.shape for x in b.arrays}
    for label, items in (
        ("new groups", d.new_groups),
        ("deleted groups", d.deleted_groups),
        ("updated groups", d.updated_groups),
        ("new arrays", d.new_arrays),
        ("deleted arrays", d.deleted_arrays),
    ):
        if items:
            lines.append(f"{label + ':':16}{', '.join(p or '/' for p in items)}")
    if d.updated_arrays:
        lines.append("updated arrays:")
        for p in d.updated_arrays:
            old, new = shapes_a.get(p), shapes_b.get(p)
            what = (
                f"shape {_shape(old)} -> {_shape(new)}"
                if old and new and old != new
                else "metadata changed"
            )
            lines.append(f"  {p}: {what}")
    if d.chunks:
        total = sum(c.total for c in d.chunks.values())
        lines.append(f"chunks: {total} changed")
        rows = [
            [p, f"+{c.added} added", f"~{c.modified} modified", f"-{c.removed} removed"]
            for p, c in sorted(d.chunks.items())
        ]
        lines += _table(rows)
    return lines


def _cmd_diff(args: argparse.Namespace) -> int:
    repo = open_repository(args.path)
    a, b = resolve_ref(repo, args.a), resolve_ref(repo, args.b)
    d = diff_snapshots(repo, a, b)
    lines = _diff_lines(d, snapshot_summary(repo, a), snapshot_summary(repo, b), args)
    return _emit(args, d.to_dict(), lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from icechunk_dask._demo import DemoOptions, format_result, run_demo, stdout_is_terminal

    progress = args.progress if args.progress is not None else stdout_is_terminal()
    opts = DemoOptions(
        path=Path(args.path),
        size_mb=args.size_mb,
        chunk_mb=args.chunk_mb,
        workers=args.workers,
        threads=args.threads,
        memory_limit=args.memory_limit,
        progress=progress and not args.json,
    )

    def echo(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    result = run_demo(opts, echo=echo)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_result(result))
    return 0 if result.verified else 1


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``icechunk-dask``.

    Returns
    -------
    argparse.ArgumentParser
        With one subcommand per command.
    """
    from icechunk_dask import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write large Zarr v3 datasets in parallel with Dask, in one atomic commit; "
        "inspect icechunk-dask repositories.",
        epilog="REF is a branch, a tag or a snapshot id, optionally followed by ~N (N commits "
        "back), e.g. main~1.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.set_defaults(func=func)
        return p

    demo = command(
        "demo",
        _cmd_demo,
        "run the end-to-end demo: a LocalCluster writes a synthetic dataset into a local "
        "repository in parallel, commits once and verifies; a second run appends",
    )
    demo.add_argument(
        "--path", default="demo-repo", help="repository directory (default: %(default)s)"
    )
    demo.add_argument(
        "--size-mb", type=float, default=300.0, help="dataset size in MB (default: %(default)s)"
    )
    demo.add_argument(
        "--chunk-mb", type=float, default=2.0, help="chunk size in MB (default: %(default)s)"
    )
    demo.add_argument(
        "--workers", type=int, help="worker processes (default: up to 2, one per core)"
    )
    demo.add_argument(
        "--threads", type=int, help="threads per worker (default: cores / workers, at most 2)"
    )
    demo.add_argument(
        "--memory-limit", help="memory limit per worker, e.g. 4GB (default: 80%% of RAM, shared)"
    )
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when standard output is a terminal)",
    )

    log = command("log", _cmd_log, "list the ancestry of a branch (or any REF), newest first")
    log.add_argument("path", help="repository directory")
    log.add_argument("ref", nargs="?", default="main", help="where to start (default: main)")
    log.add_argument("-n", "--max-count", type=int, help="show at most this many snapshots")

    branches = command("branches", _cmd_branches, "list branches and the snapshots they point at")
    branches.add_argument("path", help="repository directory")

    tags = command("tags", _cmd_tags, "list tags and the snapshots they point at")
    tags.add_argument("path", help="repository directory")

    show = command("show", _cmd_show, "describe a snapshot: arrays, shapes, chunk counts")
    show.add_argument("path", help="repository directory")
    show.add_argument("ref", nargs="?", default="main", help="snapshot to show (default: main)")

    diff = command("diff", _cmd_diff, "show what changed from snapshot A to snapshot B")
    diff.add_argument("path", help="repository directory")
    diff.add_argument("a", metavar="A", help="the older REF")
    diff.add_argument("b", metavar="B", help="the newer REF")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``icechunk-dask`` command.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
    except IcechunkDaskError as e:
        print(f"{PROG}: error ({e.kind}): {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1
