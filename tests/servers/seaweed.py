"""Pytest fixtures for a SeaweedFS S3 server (see :mod:`tests.servers._seaweed`).

Load as a plugin from a test module (``pytest_plugins = ["tests.servers.seaweed"]``),
never by importing the fixtures, so that the session-scoped server is shared by
every module that uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers._seaweed import SeaweedServer, start_seaweed

__all__ = ["seaweed_bucket", "seaweed_server"]


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server for the whole test session; stopped by PID at the end."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seaweed_bucket(seaweed_server: SeaweedServer) -> dict[str, Any]:
    """A fresh bucket on the SeaweedFS server; keyword arguments for ``s3_storage``."""
    return seaweed_server.storage_kwargs(seaweed_server.create_bucket())
