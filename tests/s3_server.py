"""A real S3 server for tests: ``moto_server`` in a subprocess on 127.0.0.1.

Import the fixtures from ``tests/conftest.py``::

    from tests.s3_server import s3_bucket, s3_server  # noqa: F401

moto honours ``If-None-Match: *`` on PUT (412) but does not check it
atomically, so use it for semantics, never as proof of concurrency safety
(see notes/storage-and-reliability.md).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["create_bucket", "s3_bucket", "s3_server"]

_STARTUP_TIMEOUT = 30.0
#: Never route loopback test traffic through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_bucket_counter = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=1) as resp:
            resp.read()
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the S3 server at ``endpoint`` (a plain HTTP PUT).

    Parameters
    ----------
    endpoint
        The server URL, e.g. ``"http://127.0.0.1:5000"``.
    bucket
        The new bucket's name.
    """
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", data=b"")
    with _OPENER.open(request, timeout=10) as resp:
        resp.read()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port; yield its endpoint URL."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not _answers(f"{endpoint}/"):
            if proc.poll() is not None:
                pytest.fail(
                    f"moto_server exited with code {proc.returncode}; is moto[server] "
                    f"installed? Log:\n{log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer on {endpoint} in {_STARTUP_TIMEOUT}s")
            time.sleep(0.05)
        yield endpoint
    finally:
        with contextlib.suppress(Exception):
            _stop(proc)


@pytest.fixture
def s3_bucket(s3_server: str) -> dict[str, Any]:
    """Create a fresh bucket; return keyword arguments for ``s3_storage``."""
    bucket = f"test-{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:8]}"
    create_bucket(s3_server, bucket)
    return {
        "bucket": bucket,
        "endpoint_url": s3_server,
        "region": "us-east-1",
        "allow_http": True,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
