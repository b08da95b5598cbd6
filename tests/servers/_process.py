"""Start and stop test server processes on 127.0.0.1: free ports, readiness, stop by PID.

Every process started here

- listens on 127.0.0.1 only (the caller passes the addresses);
- dies with the test run even if pytest itself is killed: on Linux it is started
  through ``setpriv --pdeathsig KILL`` (util-linux), so the kernel sends it SIGKILL
  when the process that started it exits;
- is stopped by its PID (SIGTERM, then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["ServerProcess", "launcher", "reserve_ports", "wait_until"]

#: The highest TCP port number.
_MAX_PORT = 65535


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def reserve_ports(count: int, *, also_free_offset: int | None = None) -> Iterator[list[int]]:
    """Pick ``count`` distinct free loopback ports.

    The ports stay bound (so that no two picks collide) until the ``with`` block
    is left; start the server right after it. If ``also_free_offset`` is given,
    only ports ``p`` with ``p + also_free_offset`` also free are picked (servers
    that open a second listener at a fixed offset, such as SeaweedFS's gRPC
    ports at +10000 when not set explicitly).
    """
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if also_free_offset is not None and (
                port + also_free_offset > _MAX_PORT or not _bindable(port + also_free_offset)
            ):
                s.close()
                continue
            held.append(s)
        yield [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def launcher() -> list[str]:
    """A prefix that makes the child die with this process (Linux), or nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


class ServerProcess:
    """One server process with its log file.

    Parameters
    ----------
    name
        Short name used in messages.
    argv
        The command line (the executable first).
    cwd
        Working directory (also where the log goes).
    env
        The complete environment of the process.
    """

    def __init__(self, name: str, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*launcher(), *argv],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not it
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the process's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` with the log tail if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with code {code}. Log tail:\n"
                f"{self.log_tail()}"
            )

    def stop(self, grace: float) -> None:
        """Send SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reap the process."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        else:
            self.proc.wait()


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: ServerProcess | None = None,
    interval: float = 0.1,
) -> float:
    """Poll ``ready()`` until it returns True; return the seconds it took.

    Raises
    ------
    RuntimeError
        If ``proc`` exits first, or after ``timeout`` seconds (with its log tail).
    """
    start = time.monotonic()
    while True:
        if proc is not None:
            proc.check_alive()
        if ready():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            tail = f" Log tail:\n{proc.log_tail()}" if proc is not None else ""
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s.{tail}")
        time.sleep(interval)
