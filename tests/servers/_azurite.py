"""A real Azure Blob Storage server for tests: Azurite (npm package ``azurite``).

The fixtures are in :mod:`tests.servers.azurite`; this module installs, starts and
stops servers.

- Installed on first use with ``npm install azurite@3`` into ``<venv>/azurite``
  (node 18+ and the npm registry needed; one install per venv, under a file lock).
- ``azurite-blob`` on 127.0.0.1 and a free port, its own workspace directory as
  cwd, HOME and TMPDIR, telemetry off, strict API checks, one account with a
  random key (``AZURITE_ACCOUNTS``): other keys get 403.
- Ready when a probe container can be created; stopped by PID.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from tests.servers._process import ServerProcess, reserve_ports, wait_until

__all__ = ["AzuriteServer", "ensure_azurite", "start_azurite"]

#: The npm package and major version installed for the tests.
AZURITE_PACKAGE = "azurite@3"
INSTALL_TIMEOUT = 900.0
STARTUP_TIMEOUT = 120.0
STOP_GRACE = 5.0
_API_VERSION = "2021-08-06"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ensure_azurite() -> Path:
    """Return the ``azurite-blob`` executable, installing Azurite with npm if needed."""
    root = Path(sys.prefix) / "azurite"
    exe = root / "node_modules" / ".bin" / "azurite-blob"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError(
            "the Azure tests need Azurite, installed with npm: install node (18 or newer) "
            "and npm, or deselect them with -m 'not azurite'"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not exe.exists():
            subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(root),
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    AZURITE_PACKAGE,
                ],
                check=True,
                timeout=INSTALL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
    return exe


@dataclass
class AzuriteServer:
    """A running Azurite blob server.

    Attributes
    ----------
    endpoint : str
        The blob endpoint, ``http://127.0.0.1:<port>/<account>``.
    account_name, account_key : str
        The only account and key the server accepts.
    process : ServerProcess
        The server process (stop it by PID with :meth:`stop`).
    startup_seconds : float
        Seconds from launch until the first container was created.
    """

    endpoint: str
    account_name: str
    account_key: str = field(repr=False)
    process: ServerProcess
    startup_seconds: float = 0.0

    def create_container(self, name: str | None = None) -> str:
        """Create a container (a fresh unique name if ``name`` is None); return its name."""
        if name is None:
            name = f"t{os.getpid()}-{uuid.uuid4().hex[:12]}"
        status = self._put_container(name)
        if status != 201:
            raise RuntimeError(f"creating container {name!r} answered HTTP {status}")
        return name

    def storage_kwargs(self, container: str) -> dict[str, Any]:
        """Keyword arguments of ``azure_storage`` for ``container`` on this server."""
        return {
            "container": container,
            "account_name": self.account_name,
            "account_key": self.account_key,
            "endpoint_url": self.endpoint,
            "allow_http": True,
        }

    def stop(self) -> None:
        """Stop the server by PID."""
        self.process.stop(STOP_GRACE)

    def _put_container(self, name: str) -> int:
        """Create a container with a SharedKey-signed request; return the HTTP status."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": _API_VERSION}
        content_type = "application/octet-stream"
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        # path-style URL: the account appears in the resource twice
        resource = f"/{self.account_name}/{self.account_name}/{name}\nrestype:container"
        to_sign = f"PUT\n\n\n\n\n{content_type}\n" + "\n" * 6 + canonical_headers + resource
        key = base64.b64decode(self.account_key)
        signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            data=b"",
            headers={
                **headers,
                "Content-Type": content_type,
                "Authorization": f"SharedKey {self.account_name}:{signature.decode()}",
            },
        )
        try:
            with _OPENER.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    def _ready(self) -> bool:
        try:
            return self._put_container("ready-probe") in (201, 409)
        except OSError:
            return False


def start_azurite(root: Path, *, attempts: int = 3) -> AzuriteServer:
    """Install if needed, start Azurite in ``root`` and wait until it creates containers.

    A start that fails (another process took the chosen port meanwhile) is
    retried on a new port.
    """
    exe = ensure_azurite()
    root.mkdir(parents=True, exist_ok=True)
    account = "icdtest"
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "TMPDIR": str(root),
        "AZURITE_ACCOUNTS": f"{account}:{key}",
    }
    last_error: Exception | None = None
    for attempt in range(attempts):
        with reserve_ports(1) as (port,):
            pass
        start = time.monotonic()
        argv = [
            str(exe),
            "--blobHost=127.0.0.1",
            f"--blobPort={port}",
            f"--location={root / f'workspace-{attempt}'}",
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ]
        process = ServerProcess(f"azurite-{attempt}", argv, root, env)
        server = AzuriteServer(f"http://127.0.0.1:{port}/{account}", account, key, process)
        try:
            wait_until(server._ready, timeout=STARTUP_TIMEOUT, what="Azurite", proc=process)
        except BaseException as e:
            server.stop()
            if not isinstance(e, RuntimeError):
                raise
            last_error = e
            continue
        server.startup_seconds = time.monotonic() - start
        return server
    raise RuntimeError(f"Azurite did not start in {attempts} attempts: {last_error}")
