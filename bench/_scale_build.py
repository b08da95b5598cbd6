"""Repositories for bench_scale.py: one float32 variable ``v(time, y, x)`` in 1x1x1 chunks.

Every implementation holds the same dataset: ``steps`` time steps of 32 x 32
values (1,024 chunks per step), random float32 values seeded by the step, the
encoding xarray gives by default (zarr's default codecs: bytes + zstd), so
every chunk is a ~13-byte object that both icechunk_dask (inline threshold 64
bytes) and icechunk (512 bytes) store inside their manifests.

Implementations (``IMPLS``):

ours
    ``icechunk_dask`` with its default configuration (boxes of ~65,536 refs:
    64 steps of 1,024 chunks), durable local storage.
ic-nosplit, ic-split16, ic-split1
    icechunk 2.3 without manifest splitting, and split every 16 (as Icechunk's
    docs advise) or every 1 step along ``time``.
plain
    ``zarr.storage.LocalStore`` (a directory of files).

How the big repositories are built (``how`` in the results):

to_zarr
    ``icechunk_dask.to_zarr`` / ``icechunk.xarray.to_icechunk`` /
    ``Dataset.to_zarr`` of a dask-backed dataset on the threaded scheduler (2
    threads), dask blocks of ``block_steps`` steps; timed (this is also the
    "1,024,000 tiny chunks with to_zarr" figure).
rewrite
    icechunk split variants at the sizes built with ``to_zarr``: a copy of the
    ``ic-nosplit`` repository reopened with the splitting configuration and
    ``Repository.rewrite_manifests`` (Icechunk's way to split an existing
    repository).
virtual
    icechunk at 10M chunks (to_icechunk would take ~1 hour per repository
    here): the first step with ``to_icechunk``, then the array resized and
    every chunk set as a virtual reference (``set_virtual_refs_arr``, one
    location, 13-byte ranges) and committed with the configuration's
    splitting. Manifests then hold virtual refs instead of inline chunks; the
    1M-chunk runs measure both builds side by side to show the difference.
meta-only
    plain zarr: ``to_zarr(compute=False)`` writes the metadata of the full
    shape and no chunk file (an append with plain zarr reads no chunk, so its
    cost does not depend on the chunks already written).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from _common import dir_bytes

SIDE = 32
CHUNKS_PER_STEP = SIDE * SIDE
ENCODING = {"v": {"chunks": (1, 1, 1)}}
IMPLS = ("ours", "ic-nosplit", "ic-split16", "ic-split1", "plain")
ICECHUNK_SPLITS = {"ic-nosplit": None, "ic-split16": 16, "ic-split1": 1}


@dataclass
class Built:
    """A repository (or plain store) built for the benchmarks."""

    impl: str
    steps: int
    path: Path
    how: str
    build_s: float
    bytes: int
    snapshot: str | None = None  # the snapshot right after the build (None for plain)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def _block(start: int, block_info: Any = None) -> np.ndarray:
    info = block_info[None]
    t0 = info["array-location"][0][0] + start
    shape = info["chunk-shape"]
    out = np.empty(shape, dtype=np.float32)
    for i in range(shape[0]):
        out[i] = np.random.default_rng(t0 + i).random(shape[1:], dtype=np.float32)
    return out


def dataset(start: int, steps: int, block_steps: int) -> xr.Dataset:
    """Steps ``start .. start+steps`` of ``v``, dask-backed, blocks of ``block_steps`` steps."""
    nb, rest = divmod(steps, block_steps)
    chunks = ((block_steps,) * nb + ((rest,) if rest else ()), (SIDE,), (SIDE,))
    arr = da.map_blocks(
        _block,
        start,
        dtype=np.float32,
        chunks=chunks,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"v-{start}-{steps}-{block_steps}",
    )
    return xr.Dataset({"v": (("time", "y", "x"), arr)})


def expected_step(t: int) -> np.ndarray:
    """The values of step ``t``."""
    return np.random.default_rng(t).random((SIDE, SIDE), dtype=np.float32)


@contextlib.contextmanager
def threads() -> Iterator[None]:
    """The threaded scheduler with 2 threads (the machine's cores)."""
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


# ---------------------------------------------------------------------------------------------
# icechunk helpers
# ---------------------------------------------------------------------------------------------


def icechunk_config(split: int | None) -> Any:
    """An icechunk ``RepositoryConfig`` splitting ``v`` every ``split`` steps along time."""
    import icechunk

    if split is None:
        return icechunk.RepositoryConfig()
    splitting = icechunk.ManifestSplittingConfig.from_dict(
        {
            icechunk.ManifestSplitCondition.AnyArray(): {
                icechunk.ManifestSplitDimCondition.DimensionName("time"): split
            }
        }
    )
    return icechunk.RepositoryConfig(manifest=icechunk.ManifestConfig(splitting=splitting))


def icechunk_open(path: Path) -> Any:
    """Open an icechunk repository with its stored configuration."""
    import icechunk

    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------


def _ours_config() -> Any:
    from icechunk_dask import RepositoryConfig

    return RepositoryConfig()


def build_ours(path: Path, steps: int, block_steps: int) -> Built:
    from icechunk_dask import Repository, local_filesystem_storage, to_zarr

    t = time.perf_counter()
    repo = Repository.create(local_filesystem_storage(path), _ours_config())
    s = repo.writable_session("main")
    with threads():
        to_zarr(dataset(0, steps, block_steps), s, mode="w", encoding=ENCODING)
    snap = s.commit(f"build {steps} steps")
    dt = time.perf_counter() - t
    return Built("ours", steps, path, "to_zarr", dt, dir_bytes(path), snap)


def build_icechunk_to_zarr(impl: str, path: Path, steps: int, block_steps: int) -> Built:
    import icechunk
    from icechunk.xarray import to_icechunk

    t = time.perf_counter()
    repo = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path)), icechunk_config(ICECHUNK_SPLITS[impl])
    )
    s = repo.writable_session("main")
    with threads():
        to_icechunk(dataset(0, steps, block_steps), s, mode="w", encoding=ENCODING)
    snap = s.commit(f"build {steps} steps")
    dt = time.perf_counter() - t
    return Built(impl, steps, path, "to_zarr", dt, dir_bytes(path), snap)


def build_icechunk_rewrite(impl: str, path: Path, source: Built) -> Built:
    """Copy an unsplit icechunk repository and rewrite its manifests with ``impl``'s splits."""
    import icechunk

    t = time.perf_counter()
    shutil.copytree(source.path, path)
    t_copy = time.perf_counter() - t
    repo = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(path)), config=icechunk_config(ICECHUNK_SPLITS[impl])
    )
    repo.save_config()
    snap = repo.rewrite_manifests(f"split ({impl})", branch="main")
    dt = time.perf_counter() - t
    b = Built(impl, source.steps, path, "rewrite", dt - t_copy, dir_bytes(path), snap)
    return b


def build_icechunk_virtual(impl: str, path: Path, steps: int) -> Built:
    import icechunk
    from icechunk.xarray import to_icechunk

    t = time.perf_counter()
    repo = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path)), icechunk_config(ICECHUNK_SPLITS[impl])
    )
    s = repo.writable_session("main")
    with threads():
        to_icechunk(dataset(0, 1, 1), s, mode="w", encoding=ENCODING)
    arr = zarr.open_array(s.store, path="v", mode="r+")
    arr.resize((steps, SIDE, SIDE))
    n = steps * CHUNKS_PER_STEP
    data = path.parent / f"{path.name}-virtual.bin"
    data.write_bytes(b"")  # never read: the benchmark only writes and commits
    locs = [f"file://{data}"] * n
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(13)
    lengths = np.full(n, 13, dtype=np.uint64)
    failed = s.store.set_virtual_refs_arr(
        "/v", (steps, SIDE, SIDE), locs, offsets, lengths, validate_containers=False
    )
    assert failed is None, failed
    del locs, offsets, lengths
    snap = s.commit(f"build {steps} steps (virtual refs)")
    dt = time.perf_counter() - t
    return Built(impl, steps, path, "virtual", dt, dir_bytes(path), snap)


def build_plain(path: Path, steps: int, block_steps: int, meta_only: bool) -> Built:
    t = time.perf_counter()
    store = zarr.storage.LocalStore(path)
    with threads():
        dataset(0, steps, block_steps).to_zarr(
            store,
            mode="w",
            encoding=ENCODING,
            zarr_format=3,
            consolidated=False,
            compute=not meta_only,
        )
    dt = time.perf_counter() - t
    return Built("plain", steps, path, "meta-only" if meta_only else "to_zarr", dt, dir_bytes(path))


# ---------------------------------------------------------------------------------------------
# one append (to_zarr append_dim="time" + commit), per implementation
# ---------------------------------------------------------------------------------------------


def append_step(b: Built, step: int, branch: str = "main") -> dict[str, Any]:
    """Append step ``step`` to ``b`` on ``branch`` (opening it afresh); time, bytes written."""
    ds = dataset(step, 1, 1)
    before = dir_bytes(b.path)
    t0 = time.perf_counter()
    commit_s = 0.0
    snap = None
    with threads():
        if b.impl == "ours":
            from icechunk_dask import Repository, local_filesystem_storage, to_zarr

            s: Any = Repository.open(local_filesystem_storage(b.path)).writable_session(branch)
            to_zarr(ds, s, append_dim="time")
        elif b.impl.startswith("ic-"):
            from icechunk.xarray import to_icechunk

            s = icechunk_open(b.path).writable_session(branch)
            to_icechunk(ds, s, append_dim="time")
        else:
            s = None
            ds.to_zarr(
                zarr.storage.LocalStore(b.path),
                append_dim="time",
                zarr_format=3,
                consolidated=False,
            )
        if s is not None:
            t1 = time.perf_counter()
            snap = s.commit(f"append {step}")
            commit_s = time.perf_counter() - t1
    total = time.perf_counter() - t0
    return {
        "step": step,
        "total_s": total,
        "commit_s": commit_s,
        "bytes": dir_bytes(b.path) - before,
        "snapshot": snap,
    }


def read_last_step(b: Built) -> np.ndarray:
    """Read back the last step on ``main`` (to check that an append landed)."""
    if b.impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage

        store: Any = (
            Repository.open(local_filesystem_storage(b.path)).readonly_session(branch="main").store
        )
    elif b.impl.startswith("ic-"):
        store = icechunk_open(b.path).readonly_session(branch="main").store
    else:
        store = zarr.storage.LocalStore(b.path, read_only=True)
    return np.asarray(zarr.open_array(store, path="v", mode="r")[-1])


# ---------------------------------------------------------------------------------------------
# the set of repositories of one run
# ---------------------------------------------------------------------------------------------


class Repos:
    """Builds repositories on demand under ``root`` and remembers them in ``repos.json``.

    With a kept ``root`` (``--workdir``) a later run reuses what an earlier one
    built (its build times are then those of the earlier run).
    """

    #: the largest number of steps built with to_icechunk (bigger ones: virtual refs)
    ICECHUNK_TO_ZARR_MAX = 1000

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._index = root / "repos.json"
        self.built: dict[str, Built] = {}
        if self._index.exists():
            for key, d in json.loads(self._index.read_text()).items():
                self.built[key] = Built(**{**d, "path": Path(d["path"])})

    def _save(self) -> None:
        self._index.write_text(
            json.dumps({k: b.as_json() for k, b in self.built.items()}, indent=1)
        )

    def default_how(self, impl: str, steps: int) -> str:
        if impl == "plain":
            return "to_zarr" if steps == 1 else "meta-only"
        if impl == "ours" or steps == 1:
            return "to_zarr"
        if steps > self.ICECHUNK_TO_ZARR_MAX:
            return "virtual"
        return "to_zarr" if impl == "ic-nosplit" else "rewrite"

    def get(self, impl: str, steps: int, how: str | None = None) -> Built:
        """The repository of ``impl`` with ``steps`` steps, built if needed."""
        how = how or self.default_how(impl, steps)
        key = f"{impl}-{steps}-{how}"
        if key in self.built and self.built[key].path.exists():
            return self.built[key]
        path = self.root / key
        shutil.rmtree(path, ignore_errors=True)
        block_steps = max(1, min(100, steps // 40))
        print(f"  building {key} ...", flush=True)
        if impl == "ours":
            b = build_ours(path, steps, block_steps)
        elif impl == "plain":
            b = build_plain(path, steps, block_steps, meta_only=how == "meta-only")
        elif how == "virtual":
            b = build_icechunk_virtual(impl, path, steps)
        elif how == "rewrite":
            b = build_icechunk_rewrite(impl, path, self.get("ic-nosplit", steps, "to_zarr"))
        else:
            b = build_icechunk_to_zarr(impl, path, steps, block_steps)
        print(f"  built {key} in {b.build_s:.1f} s, {b.bytes / 2**20:.1f} MiB", flush=True)
        self.built[key] = b
        self._save()
        return b

    def remove(self) -> None:
        """Delete every repository (and the index)."""
        shutil.rmtree(self.root, ignore_errors=True)
