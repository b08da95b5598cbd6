"""Helpers shared by the benchmark scripts: timing, memory, environment, tables."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent


def loadavg() -> list[float]:
    """The 1/5/15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def version(dist: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "git_head": rev or None,
        "versions": {
            d: version(d)
            for d in ("icechunk-dask", "zarr", "numpy", "dask", "distributed", "xarray", "icechunk")
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def median(xs: Sequence[float]) -> float:
    """Median (``nan`` for no data)."""
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, result)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); ``False`` if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    """A temporary directory (under ``$BENCH_TMP`` if set), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_TMP")))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def count_files(root: Path) -> int:
    """Number of files below ``root``."""
    return sum(len(files) for _, _, files in os.walk(root))


def collect() -> None:
    """Full garbage collection, so one measurement does not pay for the previous one."""
    gc.collect()
    gc.collect()


def run_child(script: Path, args: Sequence[str], timeout: float = 900) -> Any:
    """Run ``script --child args...`` in a fresh interpreter; return its last stdout JSON line."""
    import icechunk_dask

    # the child imports the same icechunk_dask as this process (e.g. a patched copy)
    package_root = str(Path(icechunk_dask.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p
    )
    proc = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def fmt_time(s: float) -> str:
    """Seconds in a readable unit."""
    if math.isnan(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_bytes(n: float | None) -> str:
    """Bytes in a readable unit."""
    if n is None or math.isnan(n):
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


def verdict(value: float | None, target: float) -> str:
    """``ok`` if ``value <= target``."""
    if value is None or math.isnan(value):
        return "-"
    return "ok" if value <= target else "MISS"


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/<name>`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def dir_bytes(root: Path) -> int:
    """Total size in bytes of the files below ``root`` (0 if it does not exist)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                total += e.stat(follow_symlinks=False).st_size
    return total


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation; ``nan`` for no data)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def proc_io() -> dict[str, int]:
    """``/proc/self/io`` of this process (all threads): ``syscr``, ``rchar``, ``wchar``, ..."""
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


class StorageCounter:
    """Count the calls an ``icechunk_dask`` storage object receives, by method.

    The methods of the one instance are wrapped (pickled copies, e.g. on workers,
    are not counted). ``reads`` counts ``get``, ``get_range`` and ``get_range_then``
    (whatever the backend implements them with); ``bytes_read`` their result sizes.
    """

    READS = ("get", "get_range", "get_range_then")
    OTHERS = ("put", "put_if_absent", "list", "list_objects", "delete", "exists")

    def __init__(self, storage: Any) -> None:
        self.calls: dict[str, int] = {}
        self.bytes_read = 0
        self.keys_read: list[str] = []
        for name in (*self.READS, *self.OTHERS):
            inner = getattr(storage, name, None)
            if inner is not None:
                setattr(storage, name, self._wrap(name, inner))

    def _wrap(self, name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        if name == "list_objects":

            def listing(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] = self.calls.get(name, 0) + 1
                return inner(*args, **kwargs)

            return listing

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            out = await inner(*args, **kwargs)
            if name in self.READS:
                self.keys_read.append(str(args[0]) if args else "")
                if isinstance(out, bytes | bytearray | memoryview):
                    self.bytes_read += len(out)
            return out

        return counted

    @property
    def reads(self) -> int:
        """Number of read calls so far."""
        return sum(self.calls.get(n, 0) for n in self.READS)

    @property
    def total(self) -> int:
        """Number of calls of any kind so far."""
        return sum(self.calls.values())

    def snapshot(self) -> dict[str, Any]:
        """The counts so far, as plain data."""
        return {"calls": dict(self.calls), "reads": self.reads, "bytes_read": self.bytes_read}

    def reset(self) -> None:
        """Start counting from zero."""
        self.calls.clear()
        self.keys_read.clear()
        self.bytes_read = 0
