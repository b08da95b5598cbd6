"""Creating and opening repositories: ``config.json``, the root snapshot, ``main``.

Creation writes the root snapshot, then the first entry of ``main``'s log,
then ``config.json`` (create-only): the repository exists once its config
does.
"""

from __future__ import annotations

import os
import uuid

from icechunk_dask._assets import CONFIG_KEY, AssetManager, check_storage
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._exceptions import FormatVersionError, InvalidInputError, NotFoundError
from icechunk_dask.format import (
    FORMAT_VERSION,
    BranchRef,
    RepoConfig,
    Snapshot,
    branch_ref_key,
    new_id,
    now_iso,
)
from icechunk_dask.storage import Storage

__all__ = ["create_repository", "open_repository", "repository_exists"]


async def create_repository(
    location: Storage | str | os.PathLike[str], config: RepositoryConfig | None = None
) -> AssetManager:
    """Create a new repository with an empty ``main`` branch.

    Raises
    ------
    InvalidInputError
        If a repository already exists there, or the location holds other data.
    """
    storage = check_storage(location)
    if await storage.exists(CONFIG_KEY):
        raise InvalidInputError(
            f"a repository already exists at {storage.url}; use Repository.open "
            "(or Repository.open_or_create)"
        )
    existing = [k for k in await storage.list("") if not k.startswith(("refs/", "snapshots/"))]
    if existing:
        raise InvalidInputError(
            f"{storage.url} is not empty ({len(existing)} objects, e.g. {existing[0]!r}) and "
            "is not a repository; choose an empty or new location"
        )
    settings = config if config is not None else RepositoryConfig()
    if not isinstance(settings, RepositoryConfig):
        raise InvalidInputError(
            f"config must be an icechunk_dask.RepositoryConfig, got {type(settings).__name__}"
        )
    stored = RepoConfig(
        new_id(),
        FORMAT_VERSION,
        now_iso(),
        inline_threshold=settings.inline_chunk_threshold_bytes,
        manifest_box_refs=settings.manifest_box_refs,
        manifest_splits={p: dict(d) for p, d in settings.manifest_splits.items()},
        manifest_max_layers=settings.manifest_max_layers,
    )
    root = Snapshot(new_id(), None, now_iso(), "Repository initialized", {}, {}, {})
    await storage.put(f"snapshots/{root.id}", root.encode())
    await storage.durability_barrier()
    ref = BranchRef(root.id, None, uuid.uuid4().hex, now_iso())
    if not await storage.put_if_absent(branch_ref_key("main", 0), ref.encode("main", 0)):
        raise InvalidInputError(
            f"another process is creating a repository at {storage.url} at the same time; "
            "open it with Repository.open once it exists"
        )
    if not await storage.put_if_absent(CONFIG_KEY, stored.encode()):
        raise InvalidInputError(f"a repository was created concurrently at {storage.url}")
    return AssetManager(storage, stored)


async def open_repository(location: Storage | str | os.PathLike[str]) -> AssetManager:
    """Open an existing repository.

    Raises
    ------
    NotFoundError
        If there is no repository at that location.
    FormatVersionError
        If the repository was written by a newer icechunk_dask.
    """
    storage = check_storage(location)
    try:
        data = await storage.get(CONFIG_KEY)
    except NotFoundError:
        raise NotFoundError(f"no repository at {storage.url}; {await _what_is(storage)}") from None
    config = RepoConfig.decode(data, CONFIG_KEY)
    if config.format_version > FORMAT_VERSION:
        raise FormatVersionError(
            f"the repository at {storage.url} uses format version {config.format_version}, "
            f"but this icechunk_dask reads up to version {FORMAT_VERSION}; upgrade "
            "icechunk_dask to open it"
        )
    return AssetManager(storage, config)


async def _what_is(storage: Storage) -> str:
    """What is there instead of a repository, and what to do (for error messages)."""
    if any([await storage.exists(k) for k in ("zarr.json", ".zgroup", ".zarray")]):
        return (
            "it holds a plain Zarr store, not a repository. Open it with zarr or xarray "
            "directly, or import it: create a repository elsewhere and copy the data in "
            "(ds = xr.open_zarr(path); to_zarr(ds, repo.writable_session('main'), mode='w'))"
        )
    if await storage.exists("repo") or await storage.exists("config.yaml"):
        return "it looks like an Icechunk repository: open it with the icechunk package"
    return "create one with Repository.create (or Repository.open_or_create)"


async def repository_exists(location: Storage | str | os.PathLike[str]) -> bool:
    """Whether a repository exists at ``location``."""
    storage = check_storage(location)
    return await storage.exists(CONFIG_KEY)
