"""Hypothesis strategies for icechunk_dask: names, arrays, chunk regions and documents.

Everything here draws small values on purpose: the state machines in
:mod:`icechunk_dask.testing.stateful` run hundreds of examples, and small
arrays with few chunks find the same bugs as big ones, faster.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis.extra.numpy as npst
import hypothesis.strategies as st
import numpy as np

__all__ = [
    "array_names",
    "arrays_and_chunks",
    "attributes",
    "chunk_key_of",
    "chunk_payloads",
    "chunk_regions",
    "commit_messages",
    "group_document",
    "invalid_ref_names",
    "ref_names",
    "simple_dtypes",
]

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"

#: Array and group names: short, lowercase (safe on case-insensitive file systems), never
#: a Zarr-reserved name. ``"c"`` is allowed on purpose: it is also Zarr's chunk-key prefix.
array_names: st.SearchStrategy[str] = st.text(_NAME_CHARS, min_size=1, max_size=6).filter(
    lambda name: not name.startswith("__") and name != "zarr.json"
)

#: Commit messages: any text, including the empty string and non-ASCII characters.
commit_messages: st.SearchStrategy[str] = st.text(max_size=24)

#: Bytes written as a chunk: empty, inlined (at most 64 bytes) or stored as an object.
chunk_payloads: st.SearchStrategy[bytes] = st.binary(max_size=160)

#: JSON attributes of a group or array.
attributes: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(_NAME_CHARS, min_size=1, max_size=5),
    st.integers(-1000, 1000) | st.text(max_size=5) | st.booleans() | st.none(),
    max_size=3,
)


def simple_dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    """Native-endian integer, unsigned and floating dtypes.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        NumPy dtypes that every Zarr v3 codec pipeline round-trips exactly.
    """
    return (
        npst.integer_dtypes(endianness="=")
        | npst.unsigned_integer_dtypes(endianness="=")
        | npst.floating_dtypes(endianness="=", sizes=(32, 64))
    )


@st.composite
def arrays_and_chunks(
    draw: st.DrawFn, *, max_dims: int = 3, max_side: int = 8
) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    """Draw a small, non-empty NumPy array and a chunk shape for it.

    Parameters
    ----------
    draw
        Supplied by Hypothesis.
    max_dims
        Largest number of dimensions.
    max_side
        Largest length of a dimension.

    Returns
    -------
    tuple of (numpy.ndarray, tuple of int)
        The array and a chunk shape (every chunk dimension at least 1; the
        last chunk along a dimension may be partial).
    """
    shape = draw(npst.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=max_side))
    array = draw(npst.arrays(draw(simple_dtypes()), shape))
    chunks = tuple(draw(st.integers(1, side)) for side in shape)
    return array, chunks


@st.composite
def chunk_regions(
    draw: st.DrawFn, *, shape: tuple[int, ...], chunks: tuple[int, ...]
) -> tuple[slice, ...]:
    """Draw a region that lies inside exactly one chunk (whole or partial).

    Writes of such regions from different sessions never touch the same
    chunk unless they pick the same chunk, which is what the serial-vs-parallel
    machine needs to decide who owns a chunk.

    Parameters
    ----------
    draw
        Supplied by Hypothesis.
    shape
        The array's shape.
    chunks
        The array's chunk shape.

    Returns
    -------
    tuple of slice
        One non-empty slice per dimension.
    """
    region = []
    for side, chunk in zip(shape, chunks, strict=True):
        nblocks = -(-side // chunk)
        block = draw(st.integers(0, nblocks - 1))
        lo, hi = block * chunk, min(side, (block + 1) * chunk)
        whole = draw(st.booleans())
        if whole:
            region.append(slice(lo, hi))
        else:
            start = draw(st.integers(lo, hi - 1))
            stop = draw(st.integers(start + 1, hi))
            region.append(slice(start, stop))
    return tuple(region)


def chunk_key_of(path: str, region: tuple[slice, ...], chunks: tuple[int, ...]) -> str:
    """The Zarr v3 key of the chunk that ``region`` (from :func:`chunk_regions`) lies in.

    Parameters
    ----------
    path
        The array's path in the hierarchy.
    region
        A region inside one chunk.
    chunks
        The array's chunk shape.

    Returns
    -------
    str
        ``"<path>/c/i/j/..."``.
    """
    coords = "/".join(str(s.start // c) for s, c in zip(region, chunks, strict=True))
    return f"{path}/c/{coords}"


#: Valid branch and tag names, drawn mostly from a small pool so that names collide.
ref_names: st.SearchStrategy[str] = st.sampled_from(
    ["main", "dev", "feature-1", "v1.0", "x_y", "A"]
) | st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,8}\Z")

#: Branch and tag names that must be refused with ``InvalidInputError``.
invalid_ref_names: st.SearchStrategy[object] = st.sampled_from(
    [
        "",
        "a/b",
        "..",
        "a..b",
        ".hidden",
        "-dash",
        "trailing.",
        "x" * 256,
        "sp ace",
        "tab\t",
        "new\nline",
        "naïve",
        "back\\slash",
        None,
        42,
        b"main",
    ]
)


def group_document(attrs: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` bytes of a Zarr v3 group with ``attrs``.

    Parameters
    ----------
    attrs
        The group's attributes.

    Returns
    -------
    bytes
        A valid Zarr v3 group metadata document.
    """
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attrs or {}}
    return json.dumps(doc, sort_keys=True).encode()
