"""A Dask cluster of separate "hosts": ``dask scheduler`` and ``dask worker`` processes.

Each process gets its own working directory, HOME and TMPDIR (nothing on disk is
shared with the test or with each other) and an environment built from scratch,
so that what a worker knows comes from its own environment or over the network.
The workers run without a nanny (one process each, stopped by its PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import icechunk_dask
from tests.servers._process import ServerProcess, wait_until

__all__ = ["DaskCluster", "host_env", "separate_hosts"]

#: Seconds for the scheduler to write its address and for the workers to join.
STARTUP_TIMEOUT = 120.0
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE = 10.0
#: Workers exit by themselves this long after losing the scheduler.
DEATH_TIMEOUT = 60


def host_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a process that plays a separate host.

    It imports icechunk_dask from the same source tree as the test (as a real
    deployment installs the same version everywhere).
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(Path(icechunk_dask.__file__).resolve().parents[1]),
    }
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(extra or {})
    return env


@dataclass
class DaskCluster:
    """A running scheduler and its workers."""

    address: str
    scheduler: ServerProcess
    workers: list[ServerProcess]

    def processes(self) -> list[ServerProcess]:
        return [*self.workers, self.scheduler]


@contextlib.contextmanager
def separate_hosts(
    root: Path, n_workers: int, worker_env: Mapping[str, str] | None = None
) -> Iterator[DaskCluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Parameters
    ----------
    root
        A directory; each process gets a subdirectory as cwd, HOME and TMPDIR.
    n_workers
        How many single-threaded workers.
    worker_env
        Extra environment variables of the workers (credentials, for example).
    """
    dask = str(Path(sys.executable).parent / "dask")
    started: list[ServerProcess] = []
    try:
        home = root / "scheduler"
        home.mkdir(parents=True)
        address_file = home / "scheduler.json"
        scheduler = ServerProcess(
            "scheduler",
            [
                dask,
                "scheduler",
                "--host=127.0.0.1",
                "--port=0",
                "--no-dashboard",
                f"--scheduler-file={address_file}",
                "--idle-timeout=3600",
            ],
            home,
            host_env(home),
        )
        started.append(scheduler)
        wait_until(
            address_file.exists, timeout=STARTUP_TIMEOUT, what="dask scheduler", proc=scheduler
        )
        wait_until(
            lambda: bool(address_file.read_text().strip()), timeout=10, what="scheduler file"
        )
        address = json.loads(address_file.read_text())["address"]
        for i in range(n_workers):
            home = root / f"worker-{i}"
            home.mkdir()
            started.append(
                ServerProcess(
                    f"worker-{i}",
                    [
                        dask,
                        "worker",
                        address,
                        "--host=127.0.0.1",
                        "--no-nanny",
                        "--nthreads=1",
                        f"--name=worker-{i}",
                        "--no-dashboard",
                        f"--local-directory={home / 'dask'}",
                        f"--death-timeout={DEATH_TIMEOUT}",
                        "--memory-limit=2GiB",
                    ],
                    home,
                    host_env(home, worker_env),
                )
            )
        yield DaskCluster(address, scheduler, started[1:])
    finally:
        for proc in reversed(started):
            proc.stop(STOP_GRACE)
