"""Real filesystem failures for tests: a small private tmpfs, a full disk, lost permissions.

No mocks: a full disk is a real tmpfs that is really full, a permission error
is a real process that really lacks the permission.

* :class:`SmallTmpfs` mounts a tmpfs of a few MiB in a *private mount namespace*
  held by a ``sleep`` process (``unshare --mount``): nobody else sees the mount,
  it disappears with that process (stopped by PID, or after ``HOLD_SECONDS`` if
  the test run dies), and this process reaches it through ``/proc/<pid>/root``.
  Needs root, or unprivileged user namespaces (``--map-root-user``).
* :func:`without_dac_override` is the command prefix that runs a process as
  root *without* the capabilities that let root ignore file permissions, so
  ``chmod`` bites (as a non-root user, nothing is needed).
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Self

#: The holder process of a :class:`SmallTmpfs` exits by itself after this long.
HOLD_SECONDS = 600
#: What a test may wait for a helper process.
TIMEOUT = 120


def _as_root(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() == 0 else [*cmd[:1], "--map-root-user", *cmd[1:]]


class SmallTmpfs:
    """A tmpfs of ``size`` bytes and ``inodes`` inodes, private to this test.

    Parameters
    ----------
    where : Path
        An empty folder to mount it on (created if missing).
    size : int
        Capacity in bytes.
    inodes : int
        How many files and folders it can hold (the root folder counts).
    """

    def __init__(self, where: Path, size: int, inodes: int = 4096) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.where = where
        script = (
            'mount -t tmpfs -o "size=$1,nr_inodes=$2,mode=0755" tmpfs "$3" && echo ready && '
            f"exec sleep {HOLD_SECONDS}"
        )
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        self.proc = subprocess.Popen(
            [*_as_root(cmd), str(size), str(inodes), str(where)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.close()
            _, err = self.proc.communicate(timeout=TIMEOUT)
            raise RuntimeError(f"could not mount a private tmpfs on {where}: {err.strip()}")
        #: The mounted filesystem, as this process reaches it.
        self.path = Path(f"/proc/{self.proc.pid}/root{where}")

    def remount(self, options: str) -> None:
        """Remount with ``options`` (``"ro"``, ``"rw"``) inside the private namespace."""
        cmd = ["nsenter", "-t", str(self.proc.pid), "-m"]
        if os.geteuid() != 0:
            cmd += ["-U", "--preserve-credentials"]
        cmd += ["mount", "-o", f"remount,{options}", str(self.where)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=TIMEOUT)

    def close(self) -> None:
        """Stop the holder process (by its PID): the mount goes with its namespace."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _until_full(write: Callable[[], object]) -> None:
    """Call ``write`` until it fails with ``ENOSPC`` (any other error is raised)."""
    try:
        while True:
            write()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise


def fill_space(folder: Path) -> Path:
    """Write a file in ``folder`` until the filesystem is full; return it (delete it to free)."""
    filler = folder / "filler"
    block = b"\xff" * 65536
    with open(filler, "wb", buffering=0) as f:
        _until_full(lambda: f.write(block))
        _until_full(lambda: f.write(b"\xff"))  # the last partly free page
    return filler


def fill_inodes(folder: Path) -> list[Path]:
    """Create empty files in ``folder`` until no inode is left; return them."""
    made: list[Path] = []

    def one() -> None:
        path = folder / f"inode-filler-{len(made)}"
        path.touch(exist_ok=False)
        made.append(path)

    _until_full(one)
    return made


def temp_files(root: Path) -> list[str]:
    """Every temporary file of the local storage left anywhere under ``root``."""
    return sorted(
        os.path.join(d, name)
        for d, _, names in os.walk(root)
        for name in names
        if name.startswith(".tmp-")
    )


def all_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (folders included, as ``b"<dir>"``)."""
    out: dict[str, bytes] = {}
    for d, dirs, names in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root) + "/"] = b"<dir>"
        for name in names:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def without_dac_override() -> list[str]:
    """Command prefix: run a program subject to file permissions, even as root."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def run_child(scenario: str, *args: str, prefix: list[str] | None = None) -> str:
    """Run ``python -m tests.fs_children <scenario> <args>``; return its stdout.

    Raises
    ------
    AssertionError
        With the child's output, if it exits non-zero (a failed check in the child).
    """
    root = Path(__file__).resolve().parent.parent
    cmd = [*(prefix or []), sys.executable, "-m", "tests.fs_children", scenario, *args]
    proc = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"{scenario} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
