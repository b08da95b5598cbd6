"""Pytest fixtures for an Azurite blob server (see :mod:`tests.servers._azurite`).

Load as a plugin from a test module (``pytest_plugins = ["tests.servers.azurite"]``),
so that the session-scoped server is shared by every module that uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers._azurite import AzuriteServer, start_azurite

__all__ = ["azurite_container", "azurite_server"]


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """An Azurite blob server for the whole test session; stopped by PID at the end."""
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azurite_container(azurite_server: AzuriteServer) -> dict[str, Any]:
    """A fresh container on the Azurite server; keyword arguments for ``azure_storage``."""
    return azurite_server.storage_kwargs(azurite_server.create_container())
