"""Open a repository named on the command line (a directory or a URL), with messages for people."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._bootstrap import open_repository, repository_exists
from icechunk_dask._sync import run
from icechunk_dask.cli import CliError
from icechunk_dask.storage import Storage, storage_from_url

__all__ = ["open_assets", "storage_of"]

PROG = "icechunk-dask"


def _is_url(location: str) -> bool:
    return "://" in location


def storage_of(args: argparse.Namespace, *, must_exist: bool = True) -> Storage:
    """The storage ``args.location`` names, with the object-store options of the command line.

    Raises
    ------
    CliError
        If a local ``location`` does not exist (and ``must_exist``) or is a file.
    """
    location: str = args.location
    options: dict[str, Any] = {}
    if _is_url(location) and not location.startswith(("file://", "memory://")):
        for name in ("endpoint_url", "region"):
            value = getattr(args, name, None)
            if value is not None:
                options[name] = value
        for flag in ("allow_http", "anonymous"):
            if getattr(args, flag, False):
                options[flag] = True
    else:
        path = Path(location.removeprefix("file://")).expanduser()
        if must_exist and not path.exists():
            raise CliError(
                f"{location}: no such directory (create a repository with `{PROG} demo`)"
            )
        if path.exists() and not path.is_dir():
            raise CliError(f"{location} is a file, not a repository directory")
    return storage_from_url(location, **options)


def open_assets(args: argparse.Namespace) -> AssetManager:
    """Open the repository at ``args.location`` (asset layer only: no zarr import).

    Raises
    ------
    CliError
        If there is no repository there (the message says what is there instead).
    """
    storage = storage_of(args)
    if not run(repository_exists(storage)):
        if not _is_url(args.location):
            p = Path(args.location).expanduser()
            raise CliError(f"{args.location} is not an icechunk-dask repository: {_what_is(p)}")
        raise CliError(f"no icechunk-dask repository at {args.location}")
    return run(open_repository(storage))


def _what_is(p: Path) -> str:
    names = {child.name for child in p.iterdir()}
    if not names:
        return "the directory is empty"
    if names & {"zarr.json", ".zgroup", ".zarray"}:
        return "it looks like a plain Zarr store; open it with zarr or xarray directly"
    if names & {"repo", "config.yaml"} and "snapshots" in names:
        return "it looks like an Icechunk repository; open it with the icechunk package"
    return f"it has no config.json ({len(names)} entries, e.g. {min(names)!r})"
