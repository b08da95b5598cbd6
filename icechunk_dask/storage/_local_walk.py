"""Listing a local repository folder with sizes and times, a page of columns at a time.

Garbage collection, ``verify`` and ``du`` list millions of files. Per file, the
walk below does only what it must in Python (the name, one ``fstatat`` relative
to the folder's descriptor, three appends); keys, sizes and times are gathered
into the columns of an :class:`~icechunk_dask.storage.ObjectPage`, and the
callers judge a page with array operations. An object per file (``ObjectInfo``
with a ``datetime``) cost about as much as the system calls themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from icechunk_dask.storage._base import ObjectPage
from icechunk_dask.storage._local_errors import TMP_PREFIX, long_component, os_error

__all__ = ["PAGE", "walk_pages"]

#: Files per page.
PAGE = 4096
#: Entries of a scan by descriptor are examined relative to it (fstatat): no path
#: lookup per file.
_SCAN_BY_FD = os.scandir in os.supports_fd and os.stat in os.supports_dir_fd


def _page(keys: list[str], sizes: list[int], mtimes: list[float]) -> ObjectPage:
    return ObjectPage(keys, np.array(sizes, np.int64), np.array(mtimes, np.float64))


def walk_pages(
    root: Path, prefix: str, *, temporary: bool, where: str, name_max: int, page: int = 0
) -> Iterator[ObjectPage]:
    """The files under ``root`` whose keys start with ``prefix``, a page at a time.

    Parameters
    ----------
    root : Path
        The repository folder.
    prefix : str
        The start of the keys (``""``: every file).
    temporary : bool
        List only the temporary (``.tmp-*``) files interrupted writes left,
        instead of only the objects.
    where : str
        The storage's URL, for error messages.
    name_max : int
        The longest file or folder name the filesystem holds (bytes).
    page : int
        Files per page (0: :data:`PAGE`).

    Yields
    ------
    ObjectPage
        Keys, sizes and modification times of up to ``page`` files.

    Raises
    ------
    StorageError
        If a folder or file cannot be examined (the listing would be incomplete).
    """
    page = page or PAGE
    head, _, _ = prefix.rpartition("/")
    if head and long_component(head, name_max) is not None:
        return  # no folder can have that name
    keys: list[str] = []
    sizes: list[int] = []
    mtimes: list[float] = []
    stack = [(root / head if head else root, f"{head}/" if head else "")]
    while stack:
        folder, rel = stack.pop()
        fd = None
        try:
            if _SCAN_BY_FD:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            entries = os.scandir(folder if fd is None else fd)
        except (FileNotFoundError, NotADirectoryError):
            if fd is not None:
                os.close(fd)
            continue  # nothing there, or removed while walking
        except OSError as e:
            if fd is not None:
                os.close(fd)
            raise os_error(e, f"list {prefix!r} in {where}", folder) from e
        try:
            with entries:
                for entry in entries:
                    name = entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((folder / name, f"{rel}{name}/"))
                            continue
                        if name.startswith(TMP_PREFIX) != temporary:
                            continue
                        key = rel + name
                        if not key.startswith(prefix):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # deleted while listing
                        continue
                    except OSError as e:
                        key = rel + name
                        raise os_error(e, f"examine {key!r} in {where}", root / key) from e
                    keys.append(key)
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime)
                    if len(keys) >= page:
                        yield _page(keys, sizes, mtimes)
                        keys, sizes, mtimes = [], [], []
        finally:
            if fd is not None:
                os.close(fd)
    if keys:
        yield _page(keys, sizes, mtimes)
