"""Moving refs: create, reset and delete branches; create and delete tags.

A branch moves by appending one entry to its create-only log (see
:mod:`icechunk_dask._assets`); a tag is one create-only object, and deleting
it writes a create-only tombstone, so a tag name is never reused.
"""

from __future__ import annotations

import asyncio
import random
import uuid

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import (
    ConflictError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
)
from icechunk_dask.format import (
    TagRef,
    now_iso,
    tag_key,
    validate_ref_name,
    validate_snapshot_id,
)

__all__ = ["create_tag", "delete_tag", "set_branch"]

#: Attempts at appending a branch entry when other writers keep landing first.
_BRANCH_TRIES = 100


async def set_branch(
    assets: AssetManager,
    branch: str,
    snapshot_id: str | None,
    *,
    create: bool,
    expected: str | None = None,
) -> None:
    """Create, move (``snapshot_id``) or delete (``None``) a branch.

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    branch : str
        The branch name.
    snapshot_id : str or None
        Where the branch should point; ``None`` deletes it.
    create : bool
        Create a new branch (it must not exist) instead of changing one (it must).
    expected : str or None
        If given, the snapshot the caller saw at the branch's tip: the change is
        made only while the tip is still there (checked atomically with the write).

    Raises
    ------
    InvalidInputError
        If the name is invalid, or ``create`` and the branch exists.
    NotFoundError
        If the branch (when changing one) or the snapshot does not exist.
    ConflictError
        If the tip is not ``expected`` (kind ``branch-moved``), or other writers
        kept moving the branch first at every attempt (kind ``commit-conflict``).
    """
    validate_ref_name(branch, "branch", assets.storage.max_name_bytes)
    if snapshot_id is not None:
        await assets.get_snapshot(validate_snapshot_id(snapshot_id))
    if expected is not None:
        validate_snapshot_id(expected)
    for attempt in range(_BRANCH_TRIES):
        if attempt:  # jittered exponential backoff, as commits do
            await asyncio.sleep(min(1.0, 0.005 * 2 ** min(attempt, 8)) * random.random())
        seq, ref = await assets.branch_tip(branch)
        alive = ref is not None and not ref.deleted
        if create and alive:
            raise InvalidInputError(
                f"branch {branch!r} already exists; use reset_branch to move it"
            )
        if not create and not alive:
            raise NotFoundError(f"branch {branch!r} does not exist")
        parent = ref.snapshot_id if ref is not None else None
        if expected is not None and parent != expected:
            raise ConflictError(
                f"branch {branch!r} is at snapshot {parent}, not at {expected} as expected: "
                "it moved since you looked. Nothing was changed; look up the branch again "
                "(repo.lookup_branch) and decide with the new tip",
                kind=ErrorKind.BRANCH_MOVED,
            )
        deleted = snapshot_id is None
        if await assets.try_advance_branch(branch, seq + 1, snapshot_id, parent, deleted=deleted):
            return
    raise ConflictError(
        f"could not update branch {branch!r}: other writers moved it first {_BRANCH_TRIES} "
        "times in a row. Nothing was changed; retry when fewer commits are landing",
        kind=ErrorKind.COMMIT_CONFLICT,
    )


async def create_tag(assets: AssetManager, tag: str, snapshot_id: str) -> None:
    """Create an immutable tag pointing at ``snapshot_id``.

    Raises
    ------
    InvalidInputError
        If the name is invalid or the tag exists (or existed: tags are never reused).
    NotFoundError
        If the snapshot does not exist.
    """
    validate_ref_name(tag, "tag", assets.storage.max_name_bytes)
    await assets.get_snapshot(validate_snapshot_id(snapshot_id))
    storage = assets.storage
    if await storage.exists(tag_key(tag, deleted=True)):
        raise InvalidInputError(f"tag {tag!r} was deleted; deleted tag names cannot be reused")
    ref = TagRef(snapshot_id, uuid.uuid4().hex, now_iso())
    if not await storage.put_if_absent(tag_key(tag), ref.encode(tag)):
        raise InvalidInputError(f"tag {tag!r} already exists; tags are immutable")


async def delete_tag(assets: AssetManager, tag: str, *, expected: str | None = None) -> None:
    """Delete a tag; its name cannot be used again.

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    tag : str
        The tag.
    expected : str or None
        If given, the snapshot the caller believes the tag points at.

    Raises
    ------
    NotFoundError
        If the tag does not exist.
    ConflictError
        If the tag points elsewhere than ``expected``.
    """
    snap = await assets.lookup_tag(tag)
    if expected is not None and snap != expected:
        raise ConflictError(
            f"tag {tag!r} points at {snap}, not at {expected}; nothing was deleted",
            kind=ErrorKind.TAG_MOVED,
        )
    ref = TagRef(snap, uuid.uuid4().hex, now_iso())
    await assets.storage.put_if_absent(tag_key(tag, deleted=True), ref.encode(tag, deleted=True))
