"""Creating and opening repositories: ``config.json``, the root snapshot, ``main``.

Creation writes the root snapshot, then the first entry of ``main``'s log,
then ``config.json`` (create-only): the repository exists once its config
does. A creation interrupted between the entry and the config is finished by
the next ``create`` (see :func:`create_repository`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

from icechunk_dask._assets import CONFIG_KEY, AssetManager, check_storage
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._exceptions import (
    CorruptObjectError,
    FormatVersionError,
    InvalidInputError,
    NotFoundError,
)
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


#: A creation whose ``main`` entry is older than this (seconds) without ``config.json`` was
#: abandoned: its creator died between the two. A live creator needs milliseconds.
STALE_CREATION = 30.0
_POLL = 0.05


async def create_repository(
    location: Storage | str | os.PathLike[str],
    config: RepositoryConfig | None = None,
    *,
    recovered: list[str] | None = None,
) -> AssetManager:
    """Create a new repository with an empty ``main`` branch.

    A creation that another process abandoned (its ``main`` entry written,
    ``config.json`` never) is finished with these settings, once it is
    :data:`STALE_CREATION` seconds old, or at once if it cannot be finished as
    it is (a damaged entry, a missing first snapshot: a new ``main`` entry is
    appended). A creation still in progress elsewhere is waited for.

    Parameters
    ----------
    location : Storage, str or os.PathLike
        Where to create it (a storage, a path or a URL).
    config : RepositoryConfig or None
        Its settings.
    recovered : list of str or None
        Receives a sentence per interrupted creation finished (for a
        :class:`RecoveryWarning` in the caller's thread).

    Raises
    ------
    InvalidInputError
        If a repository already exists there (or was created meanwhile), or the
        location holds other data.
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
    seq, note = 0, ""
    while True:
        ref = BranchRef(root.id, None, uuid.uuid4().hex, now_iso())
        if await storage.put_if_absent(branch_ref_key("main", seq), ref.encode("main", seq)):
            break
        # another creation wrote this entry: wait for it, or take over if it was abandoned
        try:
            seq, found = await _abandoned(storage, seq)
        except InvalidInputError:  # it finished: our first snapshot is not needed
            await storage.delete([f"snapshots/{root.id}"])
            raise
        note = found or note
        if seq < 0:  # it can be finished as it is: only config.json is missing
            await storage.delete([f"snapshots/{root.id}"])  # ours, never referenced
            break
    if not await storage.put_if_absent(CONFIG_KEY, stored.encode()):
        raise InvalidInputError(f"a repository was created concurrently at {storage.url}")
    if note and recovered is not None:
        recovered.append(note)
    return AssetManager(storage, stored)


async def _abandoned(storage: Storage, seq: int) -> tuple[int, str]:
    """Decide about the creation that owns ``main`` entry ``seq``, waiting while it is live.

    Returns
    -------
    tuple of (int, str)
        ``(-1, note)`` if that creation is abandoned but complete except for
        ``config.json`` (finish it), or ``(next seq, note)`` if its entry or its
        snapshot is damaged (append a new entry instead).

    Raises
    ------
    InvalidInputError
        If ``config.json`` appeared meanwhile: the other creation finished.
    """
    while True:
        if await storage.exists(CONFIG_KEY):
            raise InvalidInputError(
                f"another process created a repository at {storage.url} at the same time; "
                "open it with Repository.open"
            )
        key = branch_ref_key("main", seq)
        try:
            ref = BranchRef.decode(await storage.get(key), key)
        except NotFoundError:
            return seq, ""  # removed meanwhile: try this entry again
        except CorruptObjectError as e:
            return seq + 1, _note(storage, f"its branch entry {key!r} is damaged ({e})")
        if await storage.exists(branch_ref_key("main", seq + 1)):
            return seq + 1, ""  # another recovery appended after it: look at that entry
        root = f"snapshots/{ref.snapshot_id}"
        try:
            if ref.snapshot_id is None or ref.deleted:
                raise NotFoundError(f"{key!r} names no snapshot")
            Snapshot.decode(await storage.get(root), root)
        except (NotFoundError, CorruptObjectError) as e:
            return seq + 1, _note(
                storage, f"the first snapshot its branch entry names is unusable ({e})"
            )
        age = (datetime.now(UTC) - datetime.fromisoformat(ref.written_at)).total_seconds()
        if age >= STALE_CREATION:
            return -1, _note(
                storage,
                f"its branch main was written {age:.0f} s ago and config.json never",
                finish=True,
            )
        await asyncio.sleep(_POLL)


def _note(storage: Storage, what: str, *, finish: bool = False) -> str:
    done = (
        "finished it: wrote config.json with this call's settings"
        if finish
        else "replaced its first entry of branch main with a new one"
    )
    return f"an interrupted creation of the repository at {storage.url} was found ({what}); {done}"


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
            "directly, or import it into a new repository elsewhere: repo = "
            "Repository.create(new_path); session = repo.writable_session('main'); "
            "to_zarr(xr.open_zarr(path), session, mode='w'); session.commit('import')"
        )
    if await storage.exists(branch_ref_key("main", 0)):
        return (
            "an interrupted creation was found (a branch main but no config.json): "
            "Repository.create or Repository.open_or_create finishes it (at once if it is "
            f"damaged, else once it is {STALE_CREATION:.0f} s old)"
        )
    if await storage.exists("repo") or await storage.exists("config.yaml"):
        return "it looks like an Icechunk repository: open it with the icechunk package"
    return "create one with Repository.create (or Repository.open_or_create)"


async def repository_exists(location: Storage | str | os.PathLike[str]) -> bool:
    """Whether a repository exists at ``location``."""
    storage = check_storage(location)
    return await storage.exists(CONFIG_KEY)
