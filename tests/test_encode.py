"""The synchronous small-chunk encoder writes exactly the bytes zarr writes, or steps aside."""

from __future__ import annotations

import gzip
import types
from typing import Any
from unittest import mock

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    TransposeCodec,
    ZstdCodec,
)
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from icechunk_dask._encode import encode_chunks

CODECS: dict[str, dict[str, Any]] = {
    "raw": {"compressors": None},
    "zstd": {"compressors": [ZstdCodec(level=1)]},
    "gzip+crc32c": {"compressors": [GzipCodec(level=1), Crc32cCodec()]},
    "blosc": {"compressors": [BloscCodec(cname="lz4", shuffle="shuffle")]},
    "big-endian": {"serializer": BytesCodec(endian="big"), "compressors": None},
    "transpose": {"filters": [TransposeCodec(order=(1, 0))], "compressors": [ZstdCodec()]},
}
DTYPES = ["int8", "uint16", "int64", "float32", "float64", "complex64", "bool"]


def _zarr_bytes(store: MemoryStore, path: str) -> dict[str, bytes]:
    async def collect() -> dict[str, bytes]:
        out = {}
        async for key in store.list_prefix(f"{path}/c/"):
            value = await store.get(key, zarr.core.buffer.default_buffer_prototype())
            assert value is not None
            out[key] = value.to_bytes()
        return out

    return sync(collect())


def _data(dtype: str, shape: tuple[int, ...], seed: int, fill: Any) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = (rng.random(shape) * 100).astype(dtype)
    if values.dtype.kind == "f":
        values[rng.random(shape) < 0.1] = np.nan
    values[rng.random(shape) < 0.3] = fill  # some chunks come out empty
    return values


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(sorted(CODECS)),
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 23), st.integers(1, 23)),
    chunks=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    write_empty=st.booleans(),
    nan_fill=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_same_bytes_as_zarr(
    codec: str,
    dtype: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    write_empty: bool,
    nan_fill: bool,
    seed: int,
    data: st.DataObject,
) -> None:
    fill: Any = np.nan if nan_fill and np.dtype(dtype).kind == "f" else 0
    # a chunk-aligned box: whole chunks, or up to the array's end
    box = []
    for n, c in zip(shape, chunks, strict=True):
        first = data.draw(st.integers(0, (n - 1) // c))
        last = data.draw(st.integers(first + 1, -(-n // c)))
        box.append(slice(first * c, min(last * c, n)))
    selection = tuple(box)
    values = _data(dtype, tuple(s.stop - s.start for s in selection), seed, fill)
    kwargs = {"shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": fill, **CODECS[codec]}
    config = {"write_empty_chunks": write_empty}

    # gzip headers hold the time of compression (numcodecs' GZip): fixed, so that the two
    # sides compare equal also across a second boundary
    with mock.patch.object(gzip, "time", types.SimpleNamespace(time=lambda: 0.0)):
        reference = MemoryStore()
        zarr.create_array(reference, name="a", config=config, **kwargs)[selection] = values
        expected = _zarr_bytes(reference, "a")

        ours = MemoryStore()
        array = zarr.create_array(ours, name="a", config=config, **kwargs)
        encoded = encode_chunks(array._async_array, selection, values)
    assert encoded is not None
    assert {k: v for k, v in encoded if v is not None} == expected
    assert len(encoded) == int(
        np.prod([-(-(s.stop - s.start) // c) for s, c in zip(selection, chunks, strict=True)])
    )


def test_root_array_keys_have_no_prefix() -> None:
    array = zarr.create_array(MemoryStore(), shape=(4,), chunks=(2,), dtype="int32", fill_value=0)
    encoded = encode_chunks(array._async_array, (slice(0, 4),), np.arange(1, 5, dtype="int32"))
    assert encoded is not None
    assert [k for k, _ in encoded] == ["c/0", "c/1"]


@pytest.mark.parametrize(
    "case",
    ["unaligned", "stepped", "wrong dtype", "strings", "sharded", "not numpy", "0-d"],
)
def test_steps_aside_for_what_it_does_not_handle(case: str) -> None:
    store = MemoryStore()
    kwargs: dict[str, Any] = {"shape": (8, 8), "chunks": (4, 4), "dtype": "float32"}
    selection: tuple[Any, ...] = (slice(0, 8), slice(0, 8))
    values: Any = np.ones((8, 8), dtype="float32")
    if case == "unaligned":
        selection, values = (slice(1, 8), slice(0, 8)), values[1:]
    elif case == "stepped":
        selection, values = (slice(0, 8, 2), slice(0, 8)), values[::2]
    elif case == "wrong dtype":
        values = values.astype("float64")
    elif case == "strings":
        kwargs["dtype"], values = str, np.full((8, 8), "x")
    elif case == "sharded":
        kwargs["shards"] = (8, 8)
    elif case == "not numpy":
        values = np.ma.masked_array(values)
    elif case == "0-d":
        kwargs.update(shape=(), chunks=())
        selection, values = (), np.array(1.0, dtype="float32")
    array = zarr.create_array(store, name="a", **kwargs)
    assert encode_chunks(array._async_array, selection, values) is None
