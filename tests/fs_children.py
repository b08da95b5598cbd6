"""Workloads that must run in their own process: ``python -m tests.fs_children <name> <args>``.

Each changes something only a whole process can have (a file-size limit, root
without the permission override, see :mod:`tests.fs_faults`), runs a workload
through the public API and checks it; it prints one JSON document of what it
saw and exits non-zero with a message if a check failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from icechunk_dask import IcechunkDaskError, Repository, local_filesystem_storage
from icechunk_dask.storage import Storage
from tests.fs_faults import temp_files

ROWS = 65536  # float64 rows of 512 KiB: stored as one object each (not packed, not inline)


def _outcome(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = call()
    except IcechunkDaskError as e:
        return {"error": type(e).__name__, "kind": str(e.kind), "message": str(e)}
    except Exception as e:  # noqa: BLE001 - a bare error is what the tests look for
        return {"error": type(e).__name__, "kind": None, "message": str(e)}
    return {"error": None, "result": repr(result)}


def new_array(repo: Repository) -> None:
    """Commit array ``a``: 4 rows of 512 KiB (one object each), row 0 set to 1.0."""
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store,
        name="a",
        shape=(4, ROWS),
        chunks=(1, ROWS),
        dtype="f8",
        compressors=None,
        fill_value=0.0,
    )
    array[0] = 1.0
    session.commit("row 0")


def rows(repo: Repository) -> list[float]:
    """The first value of each row of ``a`` at the tip of ``main``."""
    array = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    return [float(v) for v in np.asarray(array[:, 0])]


def unreadable_parent(base: str) -> dict[str, Any]:
    """Every entry point on a repository whose parent folder loses its permissions."""
    locked = Path(base) / "locked"
    path = locked / "repo"
    locked.mkdir()
    storage = local_filesystem_storage(path)
    new_array(Repository.create(storage))
    locked.chmod(0)  # the owner keeps the right to chmod: no override needed
    try:

        async def listed(s: Storage) -> list[str]:
            return [i.key async for i in s.list_objects("")]

        calls: dict[str, Callable[[], Any]] = {
            "local_filesystem_storage": lambda: local_filesystem_storage(path),
            "Repository.exists": lambda: Repository.exists(storage),
            "Repository.open": lambda: Repository.open(storage),
            "Repository.open_or_create": lambda: Repository.open_or_create(storage),
            "Repository.create": lambda: Repository.create(storage),
            "get": lambda: asyncio.run(storage.get("config.json")),
            "exists": lambda: asyncio.run(storage.exists("config.json")),
            "list": lambda: asyncio.run(storage.list("")),
            "list_objects": lambda: asyncio.run(listed(storage)),
            "put": lambda: asyncio.run(storage.put("chunks/x", b"x")),
            "put_if_absent": lambda: asyncio.run(storage.put_if_absent("chunks/y", b"y")),
            "delete": lambda: asyncio.run(storage.delete(["config.json"])),
            "durability_barrier": lambda: asyncio.run(storage.durability_barrier()),
        }
        seen = {name: _outcome(call) for name, call in calls.items()}
    finally:
        locked.chmod(0o755)
    seen["rows after the permission is back"] = rows(Repository.open(storage))
    return seen


def read_only_folder(base: str) -> dict[str, Any]:
    """Writes into a folder without write permission; then the permission comes back."""
    path = Path(base) / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    new_array(repo)
    session = repo.writable_session("main")
    array = zarr.open_array(session.store, path="a")
    (path / "chunks").chmod(0o555)
    try:
        seen = {"write": _outcome(lambda: array.__setitem__(1, 2.0))}
        seen["temp files"] = temp_files(path)
        seen["rows while locked"] = rows(repo)
    finally:
        (path / "chunks").chmod(0o755)
    array[1] = 2.0  # the same session, retried
    session.commit("row 1")
    seen["rows after retry"] = rows(Repository.open(local_filesystem_storage(path)))
    return seen


def unlistable_folder(base: str) -> dict[str, Any]:
    """A folder that cannot be read fails a listing instead of silently shortening it."""
    storage = local_filesystem_storage(Path(base) / "store")
    for key in ("a/1", "a/b/2", "a/c/3"):
        asyncio.run(storage.put(key, b"x"))
    (storage.root / "a" / "b").chmod(0)
    try:
        return {
            "list": _outcome(lambda: sorted(asyncio.run(storage.list("a/")))),
            "list c": _outcome(lambda: sorted(asyncio.run(storage.list("a/c/")))),
        }
    finally:
        (storage.root / "a" / "b").chmod(0o755)


def file_size_limit(base: str) -> dict[str, Any]:
    """A real ``EFBIG``: this process may not write files over 1 MiB (a chunk has 2 MiB)."""
    path = Path(base) / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    new_array(repo)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store,
        name="big",
        shape=(4 * ROWS,),
        chunks=(4 * ROWS,),
        dtype="f8",
        compressors=None,
    )
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        seen = {"write": _outcome(lambda: array.__setitem__(slice(None), 3.0))}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    seen["temp files"] = temp_files(path)
    array[:] = 3.0  # the same session, retried
    session.commit("big")
    # and a new session over a new limit hit
    session = repo.writable_session("main")
    array = zarr.open_array(session.store, path="big")
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        seen["write in a new session"] = _outcome(lambda: array.__setitem__(slice(None), 4.0))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    seen["temp files after the second"] = temp_files(path)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="big")[:] = 4.0
    session.commit("big again")
    reopened = Repository.open(local_filesystem_storage(path))
    big = zarr.open_array(reopened.readonly_session("main").store, path="big", mode="r")
    seen["big"] = sorted({float(v) for v in np.asarray(big[:])})
    seen["rows"] = rows(reopened)
    return seen


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    f.__name__: f for f in (unreadable_parent, read_only_folder, unlistable_folder, file_size_limit)
}


def main(argv: list[str]) -> int:
    """Run one scenario and print what it saw as JSON."""
    name, *args = argv
    print(json.dumps(SCENARIOS[name](*args), indent=1))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
