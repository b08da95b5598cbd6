"""Rules for the names users give (branches, tags) and the ids we give (snapshots).

Names become parts of storage keys (``refs/branch.<name>/...``), so they are
checked here, before anything is written.
"""

from __future__ import annotations

import re

from icechunk_dask._exceptions import InvalidInputError, NotFoundError
from icechunk_dask.format._ids import ID_PATTERN

__all__ = ["validate_ref_name", "validate_snapshot_id"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


#: Bytes that the key layout adds to a name in its longest path component:
#: ``branch.<name>`` and ``tag.<name>.deleted.json`` (a tag's tombstone).
_OVERHEAD = {"branch": len("branch."), "tag": len("tag.") + len(".deleted.json")}


def validate_ref_name(name: object, what: str, max_name_bytes: int | None = None) -> str:
    """Return ``name`` if it is a valid branch or tag name, else raise.

    Parameters
    ----------
    name : object
        The proposed name.
    what : str
        ``"branch"``, ``"tag"`` or ``"job"`` (for the message, and the tag-only rules).
    max_name_bytes : int or None
        The longest path component the storage can hold (local filesystems:
        255 bytes); names that would not fit in their keys are refused.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    InvalidInputError
        If the name breaks the rules.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.endswith("."):
        raise InvalidInputError(
            f"invalid {what} name {name!r}: use 1-255 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (for example 'main' or 'experiment-2')"
        )
    if what == "tag" and name.endswith(".deleted"):
        # refs/tag.<name>.deleted.json is the tombstone of tag <name>
        raise InvalidInputError(
            f"invalid tag name {name!r}: names ending in '.deleted' are reserved; choose "
            "another name"
        )
    if max_name_bytes is not None:
        limit = max_name_bytes - _OVERHEAD.get(what, 0)
        if len(name.encode()) > limit:
            raise InvalidInputError(
                f"{what} name {name[:40]!r}... is {len(name.encode())} bytes long, but this "
                f"storage holds {what} names of at most {limit} bytes (its file names are "
                f"limited to {max_name_bytes} bytes, including what the repository adds); "
                "choose a shorter name"
            )
    return name


def validate_snapshot_id(snapshot_id: object) -> str:
    """Return ``snapshot_id`` if it has the form of a snapshot id, else raise.

    Parameters
    ----------
    snapshot_id : object
        The proposed id.

    Returns
    -------
    str
        ``snapshot_id``.

    Raises
    ------
    NotFoundError
        If it cannot be a snapshot id (so no such snapshot exists).
    """
    if not isinstance(snapshot_id, str) or not ID_PATTERN.fullmatch(snapshot_id):
        raise NotFoundError(
            f"{snapshot_id!r} is not a snapshot id (20 characters, 0-9 and A-Z); list them "
            "with repo.ancestry(branch='main')"
        )
    return snapshot_id
