"""Every private internal that icechunk_dask uses still exists and behaves as we rely on.

If a zarr, dask or xarray release moves one of them, a test here names it
(the imports live in ``icechunk_dask/_compat/``), instead of an obscure
failure somewhere in a write.
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype

from icechunk_dask import (
    InvalidInputError,
    Repository,
    in_memory_storage,
    store_sessions,
    to_zarr,
)
from icechunk_dask._compat import dask as cdask
from icechunk_dask._compat import xarray as cxr
from icechunk_dask._compat import zarr as czarr

RECTILINEAR_SUPPORTED = "rectilinear_chunks" in zarr.config.get("array")


def _array(**kwargs: object) -> zarr.Array:
    defaults: dict[str, object] = {"shape": (10, 6), "chunks": (4, 3), "dtype": "f4"}
    return zarr.create_array(zarr.storage.MemoryStore(), name="a", **{**defaults, **kwargs})


def test_zarr_sync_runs_a_coroutine() -> None:
    async def answer() -> int:
        return 42

    assert czarr.sync(answer()) == 42


def test_zarr_regular_chunk_shape_and_chunk_spec() -> None:
    arr = _array()
    meta = arr.metadata
    assert czarr.regular_chunk_shape(meta) == (4, 3)
    spec = czarr.chunk_spec(meta, arr._async_array.config, default_buffer_prototype())  # type: ignore[arg-type]
    assert spec.shape == (4, 3)
    assert spec.dtype == meta.dtype  # type: ignore[union-attr]
    assert czarr.fill_value_or_default(spec) == 0


def test_zarr_sync_codecs_lists_the_default_pipeline_in_order() -> None:
    arr = _array(compressors=zarr.codecs.ZstdCodec(level=1))
    codecs = czarr.sync_codecs(arr._async_array.codec_pipeline)
    assert codecs is not None
    assert [type(c).__name__ for c in codecs] == ["BytesCodec", "ZstdCodec"]
    assert all(callable(c._encode_sync) for c in codecs)
    # sharding stays on zarr's own path
    sharded = _array(shards=(8, 6))
    assert czarr.sync_codecs(sharded._async_array.codec_pipeline) is None


def test_zarr_parse_array_metadata_validates_documents() -> None:
    doc = json.loads(
        _array().metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    )
    assert czarr.parse_array_metadata(doc).shape == (10, 6)
    with pytest.raises(Exception):  # noqa: B017, PT011 - zarr's own error types vary by version
        czarr.parse_array_metadata({**doc, "data_type": "no-such-type"})
    rect = {
        **doc,
        "chunk_grid": {
            "name": czarr.RECTILINEAR,
            "configuration": {"kind": "inline", "chunk_shapes": [[4, 6], 3]},
        },
    }
    assert czarr.parse_array_metadata(rect).shape == (10, 6)


def test_zarr_async_array_and_v3_metadata_types() -> None:
    arr = _array()
    assert isinstance(arr._async_array, czarr.AsyncArray)
    assert isinstance(arr.metadata, czarr.ArrayV3Metadata)
    assert isinstance(arr._async_array.config, czarr.ArrayConfig)
    assert isinstance(arr._async_array.codec_pipeline, czarr.BatchedCodecPipeline)


def test_dask_task_spec_graph_of_a_collection() -> None:
    x = da.ones((4,), chunks=2) + 1
    expr = cdask.collections_to_expr([x], optimize_graph=True)
    graph = cdask.convert_legacy_graph(expr.__dask_graph__())
    assert all(isinstance(node, cdask.GraphNode) for node in graph.values())
    key = (x.name, 0)
    assert isinstance(graph[key], cdask.Task)
    out = cdask.execute_graph(graph, keys={key})
    np.testing.assert_array_equal(out[key], [2, 2])
    t = cdask.Task("k", sum, cdask.TaskRef("d"))
    assert dict(cdask.execute_graph({"d": cdask.DataNode("d", [1, 2]), "k": t}))["k"] == 3


def test_dask_concatenate3() -> None:
    blocks = [[np.zeros((1, 2)), np.ones((1, 1))]]
    np.testing.assert_array_equal(cdask.concatenate3(blocks), [[0, 0, 1]])


def test_xarray_writer_internals() -> None:
    assert cxr.choose_default_mode(mode=None, append_dim=None, region=None) == "w-"
    assert cxr.choose_default_mode(mode=None, append_dim="t", region=None) == "a"
    cxr.validate_dataset_names(xr.Dataset({"a": ("x", [1])}))
    with pytest.raises(TypeError, match="Invalid name"):
        cxr.validate_dataset_names(xr.Dataset({1: ("x", [1])}))
    assert cxr.DATAARRAY_VARIABLE == "__xarray_dataarray_variable__"
    assert cxr.DATAARRAY_NAME == "__xarray_dataarray_name__"
    store = zarr.storage.MemoryStore()
    zs = cxr.ZarrStore.open_group(store, mode="w", zarr_format=3, consolidated=False)
    writer = cxr.ArrayWriter()  # type: ignore[no-untyped-call]
    cxr.dump_to_store(xr.Dataset({"a": ("x", [1, 2])}), zs, writer)  # type: ignore[no-untyped-call]
    writer.sync()  # type: ignore[no-untyped-call]
    assert zarr.open_array(store, path="a")[:].tolist() == [1, 2]


def test_rectilinear_grids_are_stored_or_refused_before_writing() -> None:
    """zarr >= 3.4: plain zarr writes store any grid; the Dask writers refuse, writing nothing."""
    repo = Repository.create(in_memory_storage())
    session = repo.writable_session("main")
    if not RECTILINEAR_SUPPORTED:  # zarr < 3.4 has only regular grids
        with pytest.raises((TypeError, ValueError)):
            zarr.create_array(session.store, name="r", shape=(10,), chunks=[[3, 7]], dtype="f8")  # type: ignore[arg-type]
        return
    values = np.arange(40.0).reshape(10, 4)
    with zarr.config.set({"array.rectilinear_chunks": True}):
        arr = zarr.create_array(
            session.store, name="r", shape=(10, 4), chunks=[[3, 7], [4]], dtype="f8"
        )
        arr[:] = values
        before = session.changes()
        with pytest.raises(InvalidInputError, match="rectilinear"):
            store_sessions(da.ones((10, 4), chunks=(3, 4)), arr, session)
        ds = xr.Dataset({"v": (("x", "y"), da.zeros((10, 4), chunks=(3, 4)))})
        # xarray itself refuses to write rectilinear encodings (TypeError) before anything is
        # written; if a future xarray accepts them, our planner refuses them
        with pytest.raises((InvalidInputError, TypeError)):
            to_zarr(ds, session, group="g", mode="w", encoding={"v": {"chunks": [[3, 7], [4]]}})
        after = session.changes()
        assert after.chunks == before.chunks and after.meta == before.meta
    session.commit("rectilinear")  # committing does not need the experimental switch
    with zarr.config.set({"array.rectilinear_chunks": True}):
        back = zarr.open_array(repo.readonly_session("main").store, path="r")
        np.testing.assert_array_equal(back[:], values)
