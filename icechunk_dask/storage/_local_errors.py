"""The local filesystem's limits and ``OSError`` codes, as the library's typed errors.

Every error names the path it happened at and says what to do; the advice
depends on the ``errno``. Nothing here does I/O.
"""

from __future__ import annotations

import errno
import os

from icechunk_dask._exceptions import IcechunkDaskError, InvalidInputError, StorageError

__all__ = ["NAME_MAX", "TMP_PREFIX", "long_component", "name_too_long", "os_error"]

#: Longest file or folder name (bytes) of Linux filesystems (ext4, xfs, btrfs, tmpfs, ...).
NAME_MAX = 255
#: Temporary files are named ``TMP_PREFIX`` + 32 hex digits (37 bytes, whatever the key),
#: in the folder of the object they become; listings skip them.
TMP_PREFIX = ".tmp-"

_AGAIN = "then retry: a failed write leaves nothing behind and the session stays usable"
_CHANGED = "something other than icechunk_dask changed the repository folder; restore it"

_ADVICE: dict[int, str] = {
    errno.EACCES: (
        "permission denied: give the user running this process read and write access to "
        "the repository folder and search (x) access to every folder above it"
    ),
    errno.EPERM: (
        "operation not permitted: check the permissions, file attributes (lsattr) and mount "
        "options of the repository folder"
    ),
    errno.EROFS: (
        "the filesystem is mounted read-only: put the repository on a writable filesystem, "
        "or remount it read-write"
    ),
    errno.ENOSPC: f"the device is full (no space or no free inodes): free space, {_AGAIN}",
    errno.EDQUOT: f"the disk quota is exhausted: free space or raise the quota, {_AGAIN}",
    errno.EFBIG: (
        "the file is larger than this process's file-size limit (ulimit -f) or the "
        f"filesystem allows: raise the limit or write smaller chunks, {_AGAIN}"
    ),
    errno.EIO: (
        "the device or filesystem reported an I/O error: check the disk (dmesg) before "
        "retrying; writes made since the last commit may not be on disk"
    ),
    errno.ENOTDIR: f"a file stands where the path needs a folder: {_CHANGED}",
    errno.EISDIR: f"a folder stands where the object belongs: {_CHANGED}",
    errno.ELOOP: "too many levels of symbolic links: check the links along the repository path",
    errno.EMLINK: "the filesystem's limit of links or entries per folder was reached",
    errno.EMFILE: "this process has too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "the system has too many open files: raise fs.file-max or close programs",
    errno.EXDEV: f"the path crosses filesystems unexpectedly: {_CHANGED}",
}
_DEFAULT = "check the repository folder and the device holding it, then retry"


def long_component(key: str, limit: int = NAME_MAX) -> str | None:
    """The first ``/``-separated component of ``key`` longer than ``limit`` bytes, if any."""
    if len(os.fsencode(key)) <= limit:
        return None
    return next((p for p in key.split("/") if len(os.fsencode(p)) > limit), None)


def name_too_long(action: str, key: str, where: str, limit: int = NAME_MAX) -> InvalidInputError:
    """The error for ``action`` (write, create) on a key with a component over ``limit``."""
    part = long_component(key, limit) or key
    shown = part if len(part) <= 48 else f"{part[:24]}...{part[-16:]}"
    return InvalidInputError(
        f"cannot {action} {key.replace(part, shown)!r} in {where}: the name {shown!r} is "
        f"{len(os.fsencode(part))} bytes (UTF-8), and a local filesystem allows at most "
        f"{limit} bytes per file or folder name; use a shorter name (nothing was written)"
    )


def os_error(e: OSError, action: str, path: str | os.PathLike[str]) -> IcechunkDaskError:
    """Turn ``e``, raised while trying to ``action``, into a typed error naming the path.

    ``path`` is where the object lives; the path the system reported is named instead
    when it is more precise (a folder above it), but never a temporary file nor a name
    relative to a folder's descriptor (``unlinkat``, ``fstatat``).

    Returns
    -------
    IcechunkDaskError
        :class:`InvalidInputError` for a name the filesystem cannot hold, else
        :class:`StorageError`; raise it ``from e``.
    """
    reported = e.filename if isinstance(e.filename, str) else None
    if (
        reported is None
        or not os.path.isabs(reported)
        or os.path.basename(reported).startswith(TMP_PREFIX)
    ):
        reported = os.fspath(path)
    code = errno.errorcode.get(e.errno or 0, "")
    what = f"{e.strerror or e} ({code})" if code else str(e.strerror or e)
    if e.errno == errno.ENAMETOOLONG:
        return InvalidInputError(
            f"cannot {action}: {what} at {reported!r}; a local filesystem allows at most "
            f"{NAME_MAX} bytes per file or folder name (and about 4096 per path): use shorter "
            "names or a shorter repository path (nothing was written)"
        )
    advice = _ADVICE.get(e.errno or 0, _DEFAULT)
    return StorageError(f"cannot {action}: {what} at {reported!r}; {advice}")
