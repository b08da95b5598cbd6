"""S3 storage on a real SeaweedFS server: the fixture itself and create-only races.

The storage contract also runs on SeaweedFS (tests/test_storage.py, backend
``seaweedfs``); this module holds what only a server with atomic conditional
writes can show.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from icechunk_dask._exceptions import StorageError
from icechunk_dask.storage import s3_storage
from tests.servers._seaweed import SeaweedServer, start_seaweed

pytest_plugins = ["tests.servers.seaweed"]

pytestmark = pytest.mark.seaweedfs


# -- the fixture --------------------------------------------------------------------------


async def test_server_accepts_only_its_credentials(seaweed_bucket: dict[str, Any]) -> None:
    good = s3_storage(**seaweed_bucket)
    await good.put("k", b"v")
    bad = s3_storage(**{**seaweed_bucket, "secret_access_key": "not-the-secret"})
    with pytest.raises(StorageError, match="'k'"):
        await bad.get("k")


async def test_server_does_not_create_buckets_on_write(
    seaweed_server: SeaweedServer, seaweed_bucket: dict[str, Any]
) -> None:
    missing = s3_storage(**{**seaweed_bucket, "bucket": f"missing-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StorageError):
        await missing.put("k", b"x")
    names = [b["Name"] for b in seaweed_server.client().list_buckets()["Buckets"]]
    assert missing.bucket not in names


def _nothing_listens_on(port: int) -> bool:
    """No process listens on ``port``: a connection is refused and the port can be bound.

    SO_REUSEADDR lets the bind pass over the server's closed connections, which the
    kernel keeps in TIME_WAIT for a minute after the process is gone; a socket still
    listening on the port makes the bind fail with or without it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        else:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_server_is_stopped_by_pid_and_leaves_nothing(tmp_path: Path) -> None:
    server = start_seaweed(tmp_path / "weed")
    pid = server.process.pid
    port = int(server.endpoint.rsplit(":", 1)[1])
    try:
        os.kill(pid, 0)  # running
        assert not _nothing_listens_on(port)
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _nothing_listens_on(port)
    for p in server.grpc_ports:
        assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{p}.sock"))


# -- create-only races --------------------------------------------------------------------


@pytest.mark.slow
def test_create_only_race_threads_by_keys(seaweed_bucket: dict[str, Any]) -> None:
    """8 threads each create the same 16 keys at once: exactly one winner per key."""
    threads, keys = 8, [f"refs/branch.main/{k:08d}.json" for k in range(16)]
    storage = s3_storage(**seaweed_bucket)
    tokens = {
        (t, k): f"thread {t} key {k} {uuid.uuid4().hex}".encode()
        for t in range(threads)
        for k in keys
    }
    won: dict[tuple[int, str], bool] = {}
    barrier = threading.Barrier(threads)

    def run(t: int) -> None:
        async def all_keys() -> list[bool]:
            return list(
                await asyncio.gather(*(storage.put_if_absent(k, tokens[t, k]) for k in keys))
            )

        barrier.wait()
        won.update(zip(((t, k) for k in keys), asyncio.run(all_keys()), strict=True))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert len(won) == threads * len(keys)

    async def read_back() -> list[bytes]:
        return list(await asyncio.gather(*(storage.get(k) for k in keys)))

    for key, stored in zip(keys, asyncio.run(read_back()), strict=True):
        winners = [t for t in range(threads) if won[t, key]]
        assert len(winners) == 1, f"{key}: winners {winners}"
        assert stored == tokens[winners[0], key]
