"""The ``icechunk-dask`` command (also ``python -m icechunk_dask``).

::

    icechunk-dask demo [--repo LOCATION] [--size-mb N] ...  the end-to-end demo
    icechunk-dask log LOCATION [REF] [-n N]                   ancestry (default: main)
    icechunk-dask branches LOCATION | tags LOCATION           refs and their snapshots
    icechunk-dask show LOCATION [REF]                         arrays, shapes, chunk counts
    icechunk-dask diff LOCATION A B                           what changed from A to B
    icechunk-dask branch create|delete LOCATION NAME ...      manage branches
    icechunk-dask tag create|delete LOCATION NAME ...         manage tags
    icechunk-dask expire LOCATION --older-than T              expire old snapshots
    icechunk-dask gc LOCATION --older-than T [--dry-run]      delete unreachable objects
    icechunk-dask verify LOCATION [--chunks] [--all]          check every object
    icechunk-dask du LOCATION                                 storage used, by kind

``LOCATION`` is a directory or a URL (``s3://bucket/prefix``, ``gs://``,
``az://``, ``file://``); object-store credentials come from the environment,
``--endpoint-url``, ``--region``, ``--allow-http`` and ``--anonymous``
configure the client. ``REF`` is a branch, a tag or a snapshot id, optionally
with ``~N`` (``N`` commits back). Output is for people by default; ``--json``
prints one JSON document for scripts (errors too: ``{"error": {...}}``). The
exit status is 0 on success, 1 on an error and 2 on a usage error.

Only the standard library is imported to parse the command line; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["CliError", "build_parser", "main"]

PROG = "icechunk-dask"


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("icechunk-dask")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _location(p: argparse.ArgumentParser, help: str = "repository directory or URL") -> None:
    p.add_argument("location", metavar="LOCATION", help=help)


def _storage_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("object storage (for URLs)")
    g.add_argument("--endpoint-url", help="an S3-compatible server, e.g. http://127.0.0.1:8333")
    g.add_argument("--region", help="the bucket's region")
    g.add_argument("--allow-http", action="store_true", help="allow plain http endpoints")
    g.add_argument("--anonymous", action="store_true", help="send unsigned requests")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``icechunk-dask``.

    Returns
    -------
    argparse.ArgumentParser
        With one subcommand per command; each sets ``handler`` to ``"module:function"``.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write large Zarr v3 datasets in parallel with Dask, in one atomic commit; "
        "inspect and manage icechunk-dask repositories.",
        epilog="LOCATION is a directory or a URL (s3://bucket/prefix, gs://..., az://...). REF is "
        "a branch, a tag or a snapshot id, optionally followed by ~N (N commits back), e.g. "
        "main~1.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: str, help: str, parent: Any = sub, storage: bool = True
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        if storage:
            _storage_options(p)
        p.set_defaults(handler=handler)
        return p

    demo = command(
        "demo",
        "icechunk_dask.cli._demo:run",
        "run the end-to-end demo: a LocalCluster writes a synthetic dataset into a repository "
        "in parallel, commits once and verifies; a second run appends",
    )
    demo.add_argument(
        "--repo",
        "--path",
        dest="location",
        default="demo-repo",
        help="repository directory or URL (default: %(default)s)",
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

    log = command(
        "log",
        "icechunk_dask.cli._history:log",
        "list the ancestry of a branch (or any REF), newest first",
    )
    _location(log)
    log.add_argument("ref", nargs="?", default="main", help="where to start (default: main)")
    log.add_argument("-n", "--max-count", type=int, help="show at most this many snapshots")

    for kind in ("branches", "tags"):
        p = command(
            kind,
            f"icechunk_dask.cli._history:list_{kind}",
            f"list {kind} and the snapshots they point at",
        )
        _location(p)

    show = command(
        "show",
        "icechunk_dask.cli._inspect:show",
        "describe a snapshot: arrays, shapes, chunk counts",
    )
    _location(show)
    show.add_argument("ref", nargs="?", default="main", help="snapshot to show (default: main)")

    diff = command(
        "diff", "icechunk_dask.cli._inspect:diff", "show what changed from snapshot A to snapshot B"
    )
    _location(diff)
    diff.add_argument("a", metavar="A", help="the older REF")
    diff.add_argument("b", metavar="B", help="the newer REF")

    for kind in ("branch", "tag"):
        group = sub.add_parser(
            kind, help=f"create or delete a {kind}", description=f"create or delete a {kind}"
        )
        actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = command(
            "create",
            f"icechunk_dask.cli._history:create_{kind}",
            f"create a {kind} at a REF",
            parent=actions,
        )
        _location(create)
        create.add_argument("name", help=f"the new {kind}'s name")
        create.add_argument(
            "ref", nargs="?", default="main", help="where it points (default: main)"
        )
        delete = command(
            "delete",
            f"icechunk_dask.cli._history:delete_{kind}",
            f"delete a {kind}",
            parent=actions,
        )
        _location(delete)
        delete.add_argument("name", help=f"the {kind} to delete")
        delete.add_argument(
            "--from",
            dest="expected",
            metavar="SNAPSHOT",
            help=f"only if the {kind} still points at this snapshot id (guards against a change "
            "made meanwhile)",
        )
        if kind == "branch":
            reset = command(
                "reset",
                "icechunk_dask.cli._history:reset_branch",
                "point a branch at another REF",
                parent=actions,
            )
            _location(reset)
            reset.add_argument("name", help="the branch")
            reset.add_argument("ref", help="where it should point")
            reset.add_argument(
                "--from",
                dest="expected",
                metavar="SNAPSHOT",
                help="only if the branch is still at this snapshot id",
            )
    _maintenance_commands(command)
    return parser


def _maintenance_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    when = "an ISO time (2026-11-01, 2026-11-01T12:00:00Z) or a duration before now (7d, 12h)"
    expire = command(
        "expire",
        "icechunk_dask.cli._maintenance:expire",
        "expire the snapshots committed before a time: history skips them, gc can then "
        "delete their data (branch tips, tags and the first snapshot never expire)",
    )
    _location(expire)
    expire.add_argument("--older-than", required=True, metavar="T", help=when)
    expire.add_argument(
        "--delete-expired-branches",
        action="store_true",
        help="also delete branches (not main) whose tip is older",
    )
    expire.add_argument(
        "--delete-expired-tags", action="store_true", help="also delete tags that are older"
    )
    gc = command(
        "gc",
        "icechunk_dask.cli._maintenance:gc",
        "delete the objects no branch or tag needs that were written before a time (choose "
        "a time before the start of any session still writing)",
    )
    _location(gc)
    gc.add_argument("--older-than", required=True, metavar="T", help=when)
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    verify = command(
        "verify",
        "icechunk_dask.cli._maintenance:verify",
        "check that every object the history needs exists, decodes and is in its place; "
        "exit status 1 if anything is wrong",
    )
    _location(verify)
    verify.add_argument(
        "--chunks", action="store_true", help="also read every chunk and check its checksum"
    )
    verify.add_argument(
        "--all", action="store_true", help="check every stored snapshot, not only the histories"
    )
    du = command(
        "du",
        "icechunk_dask.cli._maintenance:du",
        "storage used: objects and bytes by kind, reachable from branches and tags or not",
    )
    _location(du)


def _error_doc(kind: str, message: str) -> str:
    return json.dumps({"error": {"kind": kind, "message": message}}, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run the ``icechunk-dask`` command.

    Parameters
    ----------
    argv : list of str or None
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
    as_json = bool(getattr(args, "json", False))
    module, _, name = args.handler.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    from icechunk_dask._exceptions import IcechunkDaskError

    try:
        return int(handler(args))
    except CliError as e:
        kind, message = "usage", str(e)
    except IcechunkDaskError as e:
        kind, message = str(e.kind), str(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if as_json:
        print(_error_doc(kind, message))
    else:
        print(
            f"{PROG}: error ({kind}): {message}"
            if kind != "usage"
            else f"{PROG}: error: {message}",
            file=sys.stderr,
        )
    return 1
