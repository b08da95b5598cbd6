"""The end-to-end demo behind ``icechunk-dask demo``.

It starts a ``distributed.LocalCluster``, builds a synthetic weather-like
dataset (three float32 variables on a time x lat x lon grid), writes it into
a local repository with :func:`icechunk_dask.xarray.to_zarr` (one task per
Zarr chunk, change records merged in the graph), commits once, reads the new
snapshot back on the cluster to verify it, and reports what happened. A
second run appends the next time steps as a new commit.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import xarray as xr

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask._inspect import snapshot_summary
from icechunk_dask._prebuilt import layered_keys
from icechunk_dask._repository import Repository
from icechunk_dask._sync import run
from icechunk_dask.storage import Storage, local_filesystem_storage

__all__ = ["DemoOptions", "DemoResult", "Layout", "build_dataset", "plan_layout", "run_demo"]

VARIABLES = ("air_temperature", "surface_pressure", "wind_speed")
_ATTRS = {
    "air_temperature": {"units": "K", "long_name": "Air temperature at 2 m"},
    "surface_pressure": {"units": "hPa", "long_name": "Surface pressure"},
    "wind_speed": {"units": "m s-1", "long_name": "Wind speed at 10 m"},
}
#: Candidate (lat, lon) grids, finest first; the finest that leaves >= 8 time steps is used.
_GRIDS = ((720, 1440), (360, 720), (180, 360), (90, 180), (36, 72), (18, 36))
_START = np.datetime64("2026-01-01T00", "h")
_MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Layout:
    """Shape and chunking of the demo dataset."""

    ntime: int
    nlat: int
    nlon: int
    chunks: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of all data variables."""
        return len(VARIABLES) * 4 * self.ntime * self.nlat * self.nlon

    @property
    def nchunks(self) -> int:
        """Zarr chunks of all data variables."""
        shape = (self.ntime, self.nlat, self.nlon)
        return len(VARIABLES) * math.prod(
            -(-s // c) for s, c in zip(shape, self.chunks, strict=True)
        )


def plan_layout(size_mb: float, chunk_mb: float) -> Layout:
    """Choose a grid and chunking for about ``size_mb`` MB in chunks of about ``chunk_mb`` MB.

    Parameters
    ----------
    size_mb
        Target size of the data variables together, in MB (10**6 bytes).
    chunk_mb
        Target size of one chunk, in MB.

    Returns
    -------
    Layout
        A time x lat x lon layout; the time length is a multiple of the time chunk.
    """
    if not size_mb > 0 or not chunk_mb > 0:
        raise InvalidInputError("--size-mb and --chunk-mb must be positive")
    per_var = size_mb * _MB / len(VARIABLES)
    nlat, nlon = next(((y, x) for y, x in _GRIDS if 8 * 4 * y * x <= per_var), _GRIDS[-1])
    tile = (max(1, nlat // 2), max(1, nlon // 4))  # 8 spatial chunks per time step
    ct = max(1, round(chunk_mb * _MB / (4 * tile[0] * tile[1])))
    steps = per_var / (4 * nlat * nlon)
    ct = min(ct, max(1, round(steps)))
    ntime = max(ct, round(steps / ct) * ct)
    return Layout(ntime, nlat, nlon, (ct, *tile))


def _field(
    block: np.ndarray[Any, Any],
    var: int,
    t_offset: int,
    nlat: int,
    nlon: int,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """One block of a synthetic variable: smooth large-scale patterns plus seeded noise."""
    assert block_info is not None
    (t0, t1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    t = (t_offset + np.arange(t0, t1, dtype=np.float32))[:, None, None]
    lat = np.deg2rad(_lat(nlat)[y0:y1]).astype(np.float32)[None, :, None]
    lon = np.deg2rad(_lon(nlon)[x0:x1]).astype(np.float32)[None, None, :]
    rng = np.random.default_rng([var, t_offset + t0, y0, x0])
    noise = rng.standard_normal((t1 - t0, y1 - y0, x1 - x0), dtype=np.float32)
    day = 2 * np.pi * t / (24 * 365)
    if var == 0:
        out = (
            248.0
            + 45.0 * np.cos(lat) ** 2
            - 12.0 * np.cos(day) * np.sin(lat)
            + 4.0 * np.sin(3 * lon + 2 * np.pi * t / 120) * np.cos(lat)
            + 0.8 * noise
        )
    elif var == 1:
        out = 1013.0 + 9.0 * np.sin(2 * lon - 2 * np.pi * t / 96) * np.cos(2 * lat) + 1.5 * noise
    else:
        out = np.abs(6.0 + 5.0 * np.sin(3 * lat) * np.cos(lon + t / 30) + 1.2 * noise)
    return out.astype(np.float32)


def _lat(n: int) -> np.ndarray[Any, Any]:
    step = 180 / n
    return np.linspace(-90 + step / 2, 90 - step / 2, n)


def _lon(n: int) -> np.ndarray[Any, Any]:
    step = 360 / n
    return np.linspace(step / 2, 360 - step / 2, n)


def build_dataset(layout: Layout, t_offset: int = 0) -> xr.Dataset:
    """Build the synthetic dataset lazily, as dask arrays chunked like the Zarr chunks.

    Parameters
    ----------
    layout
        Shape and chunking.
    t_offset
        Index of the first time step (hourly from 2026-01-01); appends continue
        where the repository ends.

    Returns
    -------
    xarray.Dataset
        ``VARIABLES`` over ``(time, lat, lon)`` with coordinates and attributes.
    """
    import dask.array as da

    shape = (layout.ntime, layout.nlat, layout.nlon)
    template = da.zeros(shape, chunks=layout.chunks, dtype=np.float32)
    data = {
        name: (
            ("time", "lat", "lon"),
            template.map_blocks(
                _field, i, t_offset, layout.nlat, layout.nlon, dtype=np.float32, name=f"demo-{name}"
            ),
            _ATTRS[name],
        )
        for i, name in enumerate(VARIABLES)
    }
    times = _START + np.arange(t_offset, t_offset + layout.ntime).astype("timedelta64[h]")
    coords = {
        "time": ("time", times.astype("datetime64[ns]")),
        "lat": ("lat", _lat(layout.nlat), {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", _lon(layout.nlon), {"units": "degrees_east", "standard_name": "longitude"}),
    }
    attrs = {
        "title": "icechunk-dask demo: synthetic hourly weather",
        "source": "icechunk-dask demo",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``icechunk-dask demo`` was asked to do."""

    storage: Storage | None = None
    """Where the repository lives (default: the local directory ``location``)."""
    location: str = "demo-repo"
    location_options: str = ""
    """Command-line options needed to reach the location again (``--endpoint-url ...``)."""
    """How the user named it (a directory or a URL), for messages."""
    size_mb: float = 300.0
    chunk_mb: float = 2.0
    workers: int | None = None
    """Worker processes (default: up to 2, one per core)."""
    threads: int | None = None
    """Threads per worker (default: the cores divided among the workers, at most 2)."""
    memory_limit: str | None = None
    """Memory limit per worker, e.g. ``"4GB"`` (default: 80% of the RAM, shared)."""
    progress: bool = True


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo did, as printed in its summary."""

    path: str
    path_options: str
    """The options the ``icechunk-dask`` commands need to reach ``path`` (object stores)."""
    mode: str
    """``"create"`` for the first run, ``"append"`` afterwards."""
    snapshot_id: str
    parent_id: str | None
    committed_at: str
    shape: tuple[int, int, int]
    """Shape of each variable after the commit."""
    chunk_shape: tuple[int, int, int]
    time_steps: int
    """Time steps written by this run."""
    chunks_written: int
    bytes_written: int
    """Uncompressed bytes of the data variables written by this run."""
    bytes_stored: int
    """Bytes of the chunk objects written (after compression)."""
    write_seconds: float
    commit_seconds: float
    verify_seconds: float
    verified: bool
    workers: int
    threads_per_worker: int
    memory_limit: int

    @property
    def throughput_mb_s(self) -> float:
        """Uncompressed MB written per second of the parallel write."""
        return self.bytes_written / _MB / max(self.write_seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        out = asdict(self)
        out["throughput_mb_s"] = round(self.throughput_mb_s, 2)
        return out


def _existing_layout(repo: Repository) -> tuple[int, Layout] | None:
    """``(time steps, layout)`` of the demo data on ``main``; ``None`` if the branch is empty."""
    summary = snapshot_summary(repo._assets, repo.lookup_branch("main"))
    arrays = {a.path: a for a in summary.arrays}
    if not arrays:
        return None
    missing = [v for v in VARIABLES if v not in arrays]
    if missing or arrays[VARIABLES[0]].dimension_names != ("time", "lat", "lon"):
        raise InvalidInputError(
            f"the repository at {repo.storage.url} holds other data (arrays: "
            f"{sorted(arrays)}), not the demo dataset; give the demo another --repo"
        )
    first = arrays[VARIABLES[0]]
    ct, cy, cx = first.chunk_shape
    if first.shape[0] % ct:
        raise InvalidInputError(
            f"the demo data at {repo.storage.url} has {first.shape[0]} time steps, not a "
            f"multiple of its time chunk ({ct}), so a new block would share a chunk with the "
            "last one; give the demo another --repo"
        )
    ntime, nlat, nlon = first.shape
    return ntime, Layout(ntime, nlat, nlon, (ct, cy, cx))


def _cluster_size(opts: DemoOptions) -> tuple[int, int, int]:
    from distributed import system

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    if (opts.workers is not None and opts.workers < 1) or (
        opts.threads is not None and opts.threads < 1
    ):
        raise InvalidInputError("--workers and --threads must be at least 1")
    workers = opts.workers or min(2, cores)
    threads = opts.threads or max(1, min(2, cores // workers))
    if opts.memory_limit is not None:
        from dask.utils import parse_bytes

        try:
            memory = int(parse_bytes(opts.memory_limit))
        except ValueError as e:
            raise InvalidInputError(
                f"--memory-limit {opts.memory_limit!r} is not a size; use e.g. 4GB or 512MiB"
            ) from e
    else:
        memory = int(system.MEMORY_LIMIT * 0.8 / workers)
    return workers, threads, memory


def run_demo(opts: DemoOptions, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo: cluster, synthetic data, parallel write, one commit, verification.

    Parameters
    ----------
    opts
        Sizes, cluster and repository location.
    echo
        Where progress lines go.

    Returns
    -------
    DemoResult
        What was written and committed, and whether the read-back matched.

    Raises
    ------
    InvalidInputError
        If the path holds something other than the demo's repository, or an
        option is out of range.
    """
    from distributed import Client, LocalCluster

    from icechunk_dask.xarray import to_zarr

    if not opts.size_mb > 0 or not opts.chunk_mb > 0:
        raise InvalidInputError("--size-mb and --chunk-mb must be positive")
    workers, threads, memory = _cluster_size(opts)
    path = opts.location
    storage = opts.storage if opts.storage is not None else local_filesystem_storage(path)
    repo = Repository.open_or_create(storage)
    existing = _existing_layout(repo)
    if existing is None:
        offset, layout, mode = 0, plan_layout(opts.size_mb, opts.chunk_mb), "create"
    else:
        offset, old = existing
        step_bytes = len(VARIABLES) * 4 * old.nlat * old.nlon
        ct = old.chunks[0]
        ntime = max(ct, round(opts.size_mb * _MB / step_bytes / ct) * ct)
        layout, mode = Layout(ntime, old.nlat, old.nlon, old.chunks), "append"
    ds = build_dataset(layout, offset)
    chunk_bytes = 4 * math.prod(layout.chunks)
    verb = "writing" if mode == "create" else f"appending to {offset} time steps:"
    echo(
        f"icechunk-dask demo: {verb} {len(VARIABLES)} variables of "
        f"{layout.ntime} x {layout.nlat} x {layout.nlon} float32 ({_mb(layout.nbytes)}) "
        f"in {layout.nchunks} chunks of {' x '.join(map(str, layout.chunks))} "
        f"({_mb(chunk_bytes)}) into {path}"
    )
    echo(
        f"cluster: LocalCluster with {_plural(workers, 'worker process', 'es')} x "
        f"{_plural(threads, 'thread')}, "
        f"{memory / 2**30:.1f} GiB memory limit each"
    )
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            memory_limit=memory,
            processes=True,
            dashboard_address=":0",  # a free port: never clash with another cluster
            silence_logs=logging.CRITICAL,  # failures surface as exceptions here
        ) as cluster,
        Client(cluster),
    ):
        session = repo.writable_session("main")
        t0 = time.perf_counter()
        if mode == "create":
            encoding: dict[str, dict[str, Any]] = {v: {"chunks": layout.chunks} for v in VARIABLES}
            encoding["time"] = {"units": "hours since 2026-01-01", "dtype": "int64"}
            to_zarr(ds, session, mode="w", encoding=encoding, progress=opts.progress)
        else:
            to_zarr(ds, session, mode="a", append_dim="time", progress=opts.progress)
        write_seconds = time.perf_counter() - t0
        if opts.progress:
            echo("")  # end the progress bar's line
        changes = session.changes()
        # references the workers already stored as manifests count as well
        written = {**run(layered_keys(repo._assets, changes.layers)), **changes.chunks}
        stored = sum(ref[2] for ref in written.values() if ref is not None)
        chunks_written = sum(1 for k, ref in written.items() if ref is not None and _is_data(k))
        first_time = str(ds.time.values[0])[:13]
        last_time = str(ds.time.values[-1])[:13]
        message = (
            f"demo: {'write' if mode == 'create' else 'append'} {layout.ntime} hourly steps "
            f"{first_time} .. {last_time}"
        )
        metadata = {
            "tool": "icechunk-dask demo",
            "time_steps": layout.ntime,
            "bytes": layout.nbytes,
            "workers": workers,
        }
        t1 = time.perf_counter()
        snapshot_id = session.commit(message, metadata)
        commit_seconds = time.perf_counter() - t1

        t2 = time.perf_counter()
        verified = _verify(repo, snapshot_id, ds, offset)
        verify_seconds = time.perf_counter() - t2
    info = next(repo.ancestry(snapshot_id=snapshot_id))
    return DemoResult(
        path=str(path),
        path_options=opts.location_options,
        mode=mode,
        snapshot_id=snapshot_id,
        parent_id=info.parent_id,
        committed_at=info.written_at.isoformat(),
        shape=(offset + layout.ntime, layout.nlat, layout.nlon),
        chunk_shape=layout.chunks,
        time_steps=layout.ntime,
        chunks_written=chunks_written,
        bytes_written=layout.nbytes,
        bytes_stored=stored,
        write_seconds=write_seconds,
        commit_seconds=commit_seconds,
        verify_seconds=verify_seconds,
        verified=verified,
        workers=workers,
        threads_per_worker=threads,
        memory_limit=memory,
    )


def _is_data(key: str) -> bool:
    return key.split("/", 1)[0] in VARIABLES


def _verify(repo: Repository, snapshot_id: str, ds: xr.Dataset, offset: int) -> bool:
    """Read the new snapshot back (on the cluster) and compare it with the source."""
    from dask.base import compute

    ondisk = xr.open_zarr(repo.readonly_session(snapshot_id=snapshot_id).store, consolidated=False)
    if ondisk.sizes["time"] != offset + ds.sizes["time"]:
        return False
    part = ondisk.isel(time=slice(offset, None))
    for name in ("time", "lat", "lon"):
        if not np.array_equal(part[name].values, ds[name].values):
            return False
    checks = [(part[v].data == ds[v].data).all() for v in VARIABLES]
    return bool(all(compute(*checks)))


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{suffix}"


def _mb(n: float) -> str:
    return f"{n / _MB:,.1f} MB"


def format_result(result: DemoResult) -> str:
    """The human-readable summary printed at the end of the demo.

    Parameters
    ----------
    result
        What :func:`run_demo` returned.

    Returns
    -------
    str
        A few aligned lines, ending with the command to inspect the result.
    """
    ts = datetime.fromisoformat(result.committed_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    ok = "OK, identical to the source" if result.verified else "FAILED: data differs"
    return "\n".join(
        (
            (
                f"wrote     {result.chunks_written} chunks, {_mb(result.bytes_written)} "
                f"({_mb(result.bytes_stored)} stored) in {result.write_seconds:.1f} s: "
                f"{result.throughput_mb_s:,.1f} MB/s"
            ),
            f"commit    {result.snapshot_id} on main at {ts} (took {result.commit_seconds:.2f} s)",
            (
                f"dataset   {' x '.join(map(str, result.shape))} per variable "
                f"after this {'first write' if result.mode == 'create' else 'append'}"
            ),
            f"verified  read back in {result.verify_seconds:.1f} s: {ok}",
            f"inspect   icechunk-dask log {_quote(result.path)}{result.path_options}",
            f"          icechunk-dask show {_quote(result.path)}{result.path_options} main",
        )
    )


def _quote(path: str) -> str:
    import shlex

    if "://" in path:
        return shlex.quote(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    shown = rel if not rel.startswith("..") else path
    return shlex.quote(shown)


def stdout_is_terminal() -> bool:
    """Whether standard output is an interactive terminal (progress bars by default)."""
    return sys.stdout.isatty()
