"""Manifest boxes: which manifest of an array holds a chunk, by its coordinates.

Format version 2 splits each array's chunk references by *boxes* of the
chunk grid: a box is ``split[d]`` chunks along each dimension ``d``, and the
chunk at coordinates ``c`` is in box ``(c[0] // split[0], c[1] // split[1], ...)``.
An append or a region write touches only the boxes it writes. The split is
chosen when an array's first chunk is committed and then kept for as long
as the array lives, so resizing never moves references between boxes.

Keys that are not chunk keys of a known array (any key can be stored) live
in the *flat* box ``""`` of their node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FLAT",
    "UNBOUNDED",
    "Encoding",
    "array_layout",
    "box_key",
    "choose_split",
    "group_boxes",
    "group_joined",
    "parse_chunk_suffix",
]

#: The box of keys that are not chunk keys of an array with a known layout.
FLAT = ""
#: The extent of a box along a dimension that is not split.
UNBOUNDED = 2**62

#: How an array names its chunks: ``("default" | "v2", separator)``.
Encoding = tuple[str, str]

_DIGITS = re.compile(r"[0-9]+")


def parse_chunk_suffix(suffix: str, encoding: Encoding, ndim: int) -> tuple[int, ...] | None:
    """The chunk coordinates that ``suffix`` (the key after ``<array path>/``) names.

    Parameters
    ----------
    suffix : str
        E.g. ``"c/0/12"`` (default encoding) or ``"0.12"`` (v2 encoding).
    encoding : tuple of (str, str)
        The array's chunk key encoding: name and separator.
    ndim : int
        The array's number of dimensions.

    Returns
    -------
    tuple of int or None
        The coordinates, or ``None`` if ``suffix`` is not a chunk key of this array.
    """
    name, sep = encoding
    if name == "default":
        if ndim == 0:
            return () if suffix == "c" else None
        head = "c" + sep
        if not suffix.startswith(head):
            return None
        parts = suffix[len(head) :].split(sep)
    elif name == "v2":
        if ndim == 0:
            return () if suffix == "0" else None
        parts = suffix.split(sep)
    else:
        return None
    if len(parts) != ndim or not all(_DIGITS.fullmatch(p) for p in parts):
        return None
    return tuple(map(int, parts))


#: Keys parsed per batch by the bulk parser (bounds the memory of the token strings).
_BATCH = 1 << 17


def _bulk_boxes(
    suffixes: Sequence[str], encoding: Encoding, split: Sequence[int], lead: int = 0
) -> np.ndarray | None:
    """Every suffix's box index as an ``(n, ndim)`` array, or ``None`` unless all are chunk keys.

    With ``lead``, the keys start with that many ``/``-separated components
    (a node path) to skip; the encoding's separator must then be ``/``.
    """
    n, ndim = len(suffixes), len(split)
    if n == 0 or ndim == 0:
        return None
    out = np.empty((n, ndim), dtype=np.int64)
    for lo in range(0, n, _BATCH):
        part = _batch_boxes(suffixes[lo : lo + _BATCH], encoding, split, lead)
        if part is None:
            return None
        out[lo : lo + len(part)] = part
    return out


def _batch_boxes(
    suffixes: Sequence[str], encoding: Encoding, split: Sequence[int], lead: int = 0
) -> np.ndarray | None:
    """One batch of :func:`_bulk_boxes`."""
    name, sep = encoding
    if name not in ("default", "v2") or len(sep) != 1 or not sep.isascii():
        return None
    if lead and sep != "/":
        return None
    data = np.frombuffer(sep.join(suffixes).encode(), dtype=np.uint8)
    parsed = _parse_tokens(
        data, len(suffixes), encoding, split, lead, np.flatnonzero(data == ord(sep))
    )
    return None if parsed is None else parsed[0]


def _parse_tokens(
    data: np.ndarray,
    n: int,
    encoding: Encoding,
    split: Sequence[int],
    lead: int,
    cuts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Box indices of ``n`` keys whose bytes are ``data``, cut into tokens at ``cuts``.

    Exactly :func:`parse_chunk_suffix`'s rule, with NumPy: the tokens must
    line up as ``lead`` tokens to skip, then ``c`` (default encoding), then
    ``ndim`` ASCII digit strings per key. A separator is a byte no multi-byte
    character contains. Returns ``(boxes, key starts)``: each key's box index
    (``(n, ndim)``) and the offset of its first byte in ``data``.
    """
    name = encoding[0]
    ndim = len(split)
    first = lead + (1 if name == "default" else 0)  # the first coordinate's token
    width = first + ndim
    if len(cuts) + 1 != n * width:
        return None
    starts = np.concatenate(([0], cuts + 1))  # token i is data[starts[i]:ends[i]]
    ends = np.concatenate((cuts, [len(data)]))
    if name == "default":
        at = starts[lead::width]
        if not (ends[lead::width] - at == 1).all() or not (data[at] == ord("c")).all():
            return None
    digits = data - np.uint8(ord("0"))  # wraps around: anything but a digit is > 9
    out = np.zeros((n, ndim), dtype=np.int64)
    for d, extent in enumerate(split):
        lo, hi = starts[first + d :: width], ends[first + d :: width]
        sizes = hi - lo
        if (sizes <= 0).any():
            return None
        longest = int(sizes.max())
        # a box that spans every number of that many digits: its index is 0, no parse needed
        parse = extent < 10**longest
        if parse and longest > 18:  # beyond int64: the general path
            return None
        values = np.zeros(n, dtype=np.int64)
        for k in range(longest, 0, -1):  # the k-th byte from the right, where there is one
            pos = hi - k
            inside = pos >= lo
            digit = digits[np.where(inside, pos, lo)]  # outside: the first byte, read again
            if (digit > 9).any():  # every byte of every coordinate is checked: a digit
                return None
            if parse:
                values *= 10
                values += np.where(inside, digit, np.uint8(0))
        if parse:
            out[:, d] = values // extent
    return out, starts[::width]


#: Bytes of joined keys parsed per batch by :func:`group_joined` (bounds its temporaries).
_BATCH_BYTES = 1 << 21


def _joined_boxes(
    blob: bytes, n: int, encoding: Encoding, split: Sequence[int], lead: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_bulk_boxes` for keys joined by NUL: ``(boxes, offsets)`` or ``None``.

    ``offsets[i]`` is where key ``i`` starts in ``blob``; ``offsets[n]`` is
    ``len(blob) + 1`` (past the NUL that would follow the last key).
    """
    name, sep = encoding
    ndim = len(split)
    if n == 0 or ndim == 0 or name not in ("default", "v2") or sep != "/":
        return None
    width = lead + (1 if name == "default" else 0) + ndim  # tokens per key
    boxes = np.empty((n, ndim), dtype=np.int64)
    offsets = np.empty(n + 1, dtype=np.uint32 if len(blob) < 2**32 - 1 else np.int64)
    offsets[n] = len(blob) + 1
    lo = done = 0
    while True:
        hi = blob.find(b"\0", lo + _BATCH_BYTES)
        hi = len(blob) if hi < 0 else hi  # the batch is blob[lo:hi], whole keys
        if hi == lo:
            return None  # an empty key
        data = np.frombuffer(blob, dtype=np.uint8, count=hi - lo, offset=lo)
        cuts = np.flatnonzero((data == ord(sep)) | (data == 0))
        count = int(np.count_nonzero(data[cuts] == 0)) + 1
        if done + count > n:
            return None
        parsed = _parse_tokens(data, count, encoding, split, lead, cuts)
        if parsed is None:
            return None
        part, starts = parsed
        if count > 1 and not (data[cuts[width - 1 :: width]] == 0).all():
            return None  # a NUL where a separator belongs (the token count matched by chance)
        boxes[done : done + count] = part
        offsets[done : done + count] = starts + lo
        done += count
        lo = hi + 1
        if hi == len(blob):
            break
    return (boxes, offsets) if done == n else None


def group_joined(
    blob: bytes, n: int, encoding: Encoding, split: Sequence[int], lead: int = 0
) -> tuple[list[str], np.ndarray, list[int], np.ndarray] | None:
    """:func:`group_boxes` for ``n`` keys given joined by NUL (UTF-8), in bulk only.

    The encoding's separator must be ``/``. Returns ``(box keys, order,
    bounds, offsets)``, ``offsets`` as :func:`_joined_boxes` gives them, or
    ``None`` when a key is not a chunk key (the caller groups the keys one by
    one with :func:`group_boxes`).
    """
    parsed = _joined_boxes(blob, n, encoding, split, lead)
    if parsed is None:
        return None
    return (*_group_rows(parsed[0]), parsed[1])


def group_boxes(
    suffixes: Sequence[str], encoding: Encoding, split: Sequence[int], lead: int = 0
) -> tuple[list[str], np.ndarray, list[int]]:
    """Group key suffixes by box: ``(box keys, order, bounds)``.

    ``order[bounds[i]:bounds[i + 1]]`` are the indices of the suffixes in box
    ``box keys[i]``, ascending. The same grouping as :func:`parse_chunk_suffix` and
    :func:`box_key` one key at a time (keys that are not chunk keys go to
    ``FLAT``), done in bulk when every suffix is a chunk key. With ``lead``,
    the keys start with that many ``/``-separated components (their node's
    path), which are skipped.
    """
    n = len(suffixes)
    boxes = _bulk_boxes(suffixes, encoding, split, lead)
    if boxes is None:  # the general case, one key at a time
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(suffixes):
            suffix = key.split("/", lead)[lead] if lead else key
            c = parse_chunk_suffix(suffix, encoding, len(split))
            groups.setdefault(FLAT if c is None else box_key(c, split), []).append(i)
        names = list(groups)
        order = np.fromiter((i for b in names for i in groups[b]), dtype=np.int64, count=n)
        bounds = [0]
        for b in names:
            bounds.append(bounds[-1] + len(groups[b]))
        return names, order, bounds
    return _group_rows(boxes)


def _group_rows(boxes: np.ndarray) -> tuple[list[str], np.ndarray, list[int]]:
    """Group the rows of ``boxes`` (one box index per key): ``(box keys, order, bounds)``."""
    n = len(boxes)
    extents = tuple(int(e) for e in boxes.max(axis=0) + 1)
    total = math.prod(extents)
    if total <= n + 2**16:  # few possible boxes (memory as for ``flat``): count, no sort
        flat = np.ravel_multi_index(tuple(boxes.T), extents)
        unique_flat = np.flatnonzero(np.bincount(flat, minlength=total))
        rank = np.zeros(total, dtype=np.int64)
        rank[unique_flat] = np.arange(len(unique_flat))
        inverse = rank[flat]
        unique = np.stack(np.unravel_index(unique_flat, extents), axis=1)
    elif total < 2**62:  # one integer per box: sort 1-D
        flat = np.ravel_multi_index(tuple(boxes.T), extents)
        unique_flat, inverse = np.unique(flat, return_inverse=True)
        unique = np.stack(np.unravel_index(unique_flat, extents), axis=1)
    else:
        unique, inverse = np.unique(boxes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(unique) < 2**16:  # a stable sort of small integers is a radix sort in numpy
        inverse = inverse.astype(np.uint16)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(unique))
    bounds = [0, *np.cumsum(counts).tolist()]
    names = [".".join(map(str, row)) for row in unique.tolist()]
    return names, order, bounds


def box_key(coords: Sequence[int], split: Sequence[int]) -> str:
    """The key of the box holding the chunk at ``coords`` (``"i.j.k"``)."""
    return ".".join(str(c // e) for c, e in zip(coords, split, strict=True))


def choose_split(
    grid: Sequence[int],
    target_refs: int,
    overrides: Mapping[int, int] | None = None,
) -> tuple[int, ...]:
    """Box extents (in chunks per dimension) for an array whose chunk grid is ``grid``.

    Without overrides, a box holds about ``target_refs`` chunks: the first
    dimension (usually the one that grows: time) is split into slabs of
    ``target_refs // (chunks in the other dimensions)`` chunks, whatever its
    current length, so that appends fill boxes instead of creating one per
    step; if one slab of the other dimensions is already larger than the
    target, those are split too, leading ones first.

    Parameters
    ----------
    grid : sequence of int
        Number of chunks along each dimension now.
    target_refs : int
        About how many references one box should hold.
    overrides : mapping of int to int, optional
        Dimension index -> extent in chunks; dimensions not listed are not split.

    Returns
    -------
    tuple of int
        The extent of a box along each dimension.
    """
    ndim = len(grid)
    if overrides is not None:
        return tuple(max(1, int(overrides.get(d, UNBOUNDED))) for d in range(ndim))
    extents = [max(1, int(g)) for g in grid]
    for d in range(ndim):
        rest = math.prod(extents[d + 1 :])
        if rest >= target_refs:
            extents[d] = 1
            continue
        extents[d] = max(1, target_refs // rest)
        break
    return tuple(extents)


def array_layout(
    document: Mapping[str, Any],
    target_refs: int,
    overrides: Mapping[str | int, int] | None = None,
) -> tuple[Encoding, tuple[int, ...]] | None:
    """Chunk key encoding and box split for a Zarr v3 array document (``None`` if not one).

    Parameters
    ----------
    document : mapping
        The parsed ``zarr.json``.
    target_refs : int
        About how many references one box should hold.
    overrides : mapping, optional
        Dimension name or index -> box extent in chunks (a repository setting).

    Returns
    -------
    tuple or None
        ``(encoding, split)``, or ``None`` if the document is not a Zarr v3 array
        with a shape and a chunk grid we understand.
    """
    if document.get("zarr_format") != 3 or document.get("node_type") != "array":
        return None
    shape = document.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return None
    grid = _grid(document.get("chunk_grid"), shape)
    if grid is None:
        return None
    enc = document.get("chunk_key_encoding", {})
    if not isinstance(enc, Mapping):
        return None
    name = enc.get("name", "default")
    config = enc.get("configuration") or {}
    sep = config.get("separator", "/" if name == "default" else ".")
    if name not in ("default", "v2") or sep not in ("/", "."):
        return None
    by_index: dict[int, int] | None = None
    if overrides is not None:
        dims = document.get("dimension_names") or []
        by_index = {}
        for dim, extent in overrides.items():
            if isinstance(dim, int) and 0 <= dim < len(shape):
                by_index[dim] = extent
            elif isinstance(dim, str) and dim in dims:
                by_index[dims.index(dim)] = extent
    return (str(name), str(sep)), choose_split(grid, target_refs, by_index)


def _grid(chunk_grid: object, shape: list[int]) -> list[int] | None:
    """Number of chunks along each dimension."""
    if not isinstance(chunk_grid, Mapping):
        return None
    config = chunk_grid.get("configuration") or {}
    if chunk_grid.get("name") == "regular":
        chunks = config.get("chunk_shape")
        if not isinstance(chunks, list) or len(chunks) != len(shape):
            return None
        return [-(-n // c) if c else 0 for n, c in zip(shape, chunks, strict=True)]
    if chunk_grid.get("name") == "rectilinear":
        specs = config.get("chunk_shapes")
        if not isinstance(specs, list) or len(specs) != len(shape):
            return None
        out = []
        for n, spec in zip(shape, specs, strict=True):
            if isinstance(spec, int):
                out.append(-(-n // spec) if spec else 0)
            elif isinstance(spec, list):
                out.append(len(spec))
            else:
                return None
        return out
    return None
