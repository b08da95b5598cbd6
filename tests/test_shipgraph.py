"""A write task's per-block arguments keep only compressed bytes once sent (_shipgraph).

The guarantee: after a ``to_zarr`` job on a real LocalCluster, the scheduler keeps
none of the job's source tasks (distributed's log of recent messages to the
workers would otherwise keep every one of them, ~0.5-2 KiB each, job after job).
"""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask._task_spec import DataNode, Task, TaskRef, execute_graph
from distributed import Client

from icechunk_dask import Repository, local_filesystem_storage, to_zarr
from icechunk_dask._shipgraph import _CODEC, Shipped
from tests.dask_support import open_main

pytest_plugins = ["tests.dask_fixtures"]


def _graph() -> dict[object, Task]:
    arr = da.arange(12.0, chunks=4) * 2
    return {k: v for k, v in dict(arr.__dask_graph__()).items() if isinstance(v, Task)}


def test_a_shipped_subgraph_computes_what_the_subgraph_computes() -> None:
    graph = _graph()
    shipped = Shipped(graph)
    assert shipped.get() is graph and not shipped.packed  # nothing pickled: the objects
    received = pickle.loads(pickle.dumps(shipped))
    assert shipped.packed and received.packed  # sent: only the bytes are kept, on both sides
    for side in (shipped, received):
        back = side.get()
        assert set(back) == set(graph)
        want = {k for k in graph if k[0].startswith("mul")}
        got = execute_graph(back, keys=want)
        assert sorted(float(got[k].sum()) for k in want) == [12.0, 44.0, 76.0]


class _PackedMeanwhile(Shipped[object]):
    """Another thread packs it between this pickle's reads (made deterministic here)."""

    __slots__ = ("_armed",)

    def __init__(self, value: object) -> None:
        self._armed = False
        super().__init__(value)

    @property  # type: ignore[override]
    def _blob(self) -> bytes | None:
        blob: bytes | None = Shipped._blob.__get__(self)  # type: ignore[attr-defined]
        if blob is None and self._armed:
            self._armed = False
            pickle.dumps(self)  # the other thread: it sets the bytes, then drops the value
        return blob  # what this thread read before that

    @_blob.setter
    def _blob(self, blob: bytes | None) -> None:
        Shipped._blob.__set__(self, blob)  # type: ignore[attr-defined]


def test_a_pickle_racing_another_sends_the_value() -> None:
    keys = ((("src", 0), ("src", 1)),)
    shipped = _PackedMeanwhile(keys)
    shipped._armed = True
    received = pickle.loads(pickle.dumps(shipped))
    assert received.get() == keys  # not the dropped value (None)
    assert shipped.get() == keys


def test_cloudpickle_sends_it_as_pickle_does() -> None:
    # dask's "processes" scheduler and distributed's fallback pickle tasks with cloudpickle
    shipped = Shipped(((("src", 0), ("src", 1)),))
    received = cloudpickle.loads(cloudpickle.dumps(shipped))
    assert received.packed and received.get() == ((("src", 0), ("src", 1)),)
    again = cloudpickle.loads(cloudpickle.dumps(received))
    assert again.get() == shipped.get()


def test_pickled_again_it_sends_the_same_bytes() -> None:
    shipped = Shipped(_graph())
    first = pickle.dumps(shipped)
    assert pickle.dumps(shipped) == first  # a task sent again after a worker was lost


def test_the_bytes_are_a_protocol_5_pickle() -> None:
    # protocol 5 keeps large buffers (NumPy arrays in a subgraph) without an extra copy
    shipped = Shipped((("src", 0),))
    pickle.dumps(shipped)
    assert shipped._blob is not None
    assert _CODEC.decode(shipped._blob)[:2] == b"\x80\x05"


def test_what_repeats_is_compressed() -> None:
    keys = tuple(("some-source-name-0123456789abcdef", i, 0) for i in range(10_000))
    shipped = Shipped(keys)
    sent = pickle.dumps(shipped)
    assert len(sent) < 40_000 < len(pickle.dumps(keys))  # pickled bare: ~90 KB
    assert pickle.loads(sent).get() == keys


_WORKER = """
import pickle, sys
from dask._task_spec import execute_graph
shipped = pickle.loads(sys.stdin.buffer.read())
print(execute_graph(shipped.get(), keys={"a"})["a"])
"""


def _double(x: float) -> float:
    return 2 * x


def test_functions_defined_interactively_travel_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # a function the client defined in its __main__ (a notebook, a script): pickle would
    # name it "__main__.double", which a worker's __main__ does not have
    double = types.FunctionType(_double.__code__, {}, "double")
    double.__module__, double.__qualname__ = "__main__", "double"
    monkeypatch.setattr(sys.modules["__main__"], "double", double, raising=False)
    assert b"__main__" in pickle.dumps(double)  # pickle would send it by name
    shipped = Shipped({"a": Task("a", double, DataNode(None, 21.0))})
    worker = subprocess.run(
        [sys.executable, "-c", _WORKER],
        input=pickle.dumps(shipped),
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert worker.stdout.strip() == b"42.0"


def test_what_does_not_pickle_fails_when_it_is_sent_and_stays_usable() -> None:
    lock = threading.Lock()
    graph = {"a": Task("a", id, DataNode(None, lock))}
    shipped = Shipped(graph)
    with pytest.raises(TypeError):
        pickle.dumps(shipped)
    assert shipped.get() is graph and not shipped.packed  # the threaded scheduler still runs it


def test_the_scheduler_keeps_no_source_task_after_a_job(
    tmp_path: Path, dask_client: Client
) -> None:
    name = f"ship-source-{uuid.uuid4().hex}"
    blocks = 600
    arr = da.map_blocks(
        lambda: np.ones((1, 8), dtype="f4"),
        dtype="f4",
        chunks=((1,) * blocks, (8,)),
        name=name,
        meta=np.empty((0, 0), dtype="f4"),
    )
    ds = xr.Dataset({"v": (("t", "x"), arr)})
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    session = repo.writable_session("main")
    lazy = to_zarr(ds, session, mode="w", encoding={"v": {"chunks": (1, 8)}}, compute=False)
    with dask.config.set(scheduler=dask_client):
        (record,) = dask.compute(lazy)
    if record is not None:
        session.merge(record)
    session.commit("job")
    assert float(open_main(repo).v.sum()) == blocks * 8
    del lazy, ds, arr  # the client's own copy of the graph
    gc.collect()
    # the scheduler runs in this process: every task spec it still holds is on this heap
    kept = [
        o
        for o in gc.get_objects()
        if isinstance(o, Task | TaskRef) and isinstance(o.key, tuple) and o.key[0] == name
    ]
    assert kept == []
