"""The commit protocol's checks (``_commit``), at their edges.

``test_bad_input.py`` covers bad metadata one level deep; these pin which keys
are checked (nested, at the root, look-alikes), the chunk-shape rule per axis,
the messages, and the rebase count (found missing by mutation testing,
issue 13).
"""

from __future__ import annotations

import json

import pytest
import zarr

from icechunk_dask import (
    ConflictError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
    Repository,
    RepositoryConfig,
    in_memory_storage,
)
from icechunk_dask._commit import validate_metadata

_ARRAY = {
    "zarr_format": 3,
    "node_type": "array",
    "shape": [8, 6],
    "data_type": "int64",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 3]}},
    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    "fill_value": 0,
    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
}


def _doc(**changes: object) -> bytes:
    return json.dumps({**_ARRAY, **changes}).encode()


@pytest.mark.parametrize("key", ["zarr.json", "a/zarr.json", "g/h/a/zarr.json"])
def test_every_zarr_json_is_checked_at_any_depth(key: str) -> None:
    validate_metadata(key, _doc())
    validate_metadata(key, json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    with pytest.raises(InvalidInputError, match="is not valid JSON"):
        validate_metadata(key, b"{nope")
    with pytest.raises(InvalidInputError) as info:
        validate_metadata(key, _doc(zarr_format=2))
    assert str(info.value).startswith(f"{key!r} is not Zarr v3 metadata")
    with pytest.raises(InvalidInputError, match="has node_type None"):
        validate_metadata(key, json.dumps({"zarr_format": 3}).encode())
    with pytest.raises(InvalidInputError, match="not valid Zarr v3 array metadata"):
        validate_metadata(key, _doc(data_type="no-such-type"))


@pytest.mark.parametrize("key", ["a/zarr.json.bak", "a/my-zarr.json", "zarr.json/c/0", "a/c/0"])
def test_other_keys_are_not_metadata(key: str) -> None:
    validate_metadata(key, b"\x00 any bytes")


def test_a_chunk_length_of_zero_is_refused_where_data_could_be() -> None:
    grid = {"name": "regular", "configuration": {"chunk_shape": [4, 0]}}
    with pytest.raises(InvalidInputError) as info:
        validate_metadata("a/zarr.json", _doc(chunk_grid=grid))
    # newer zarr refuses it while parsing; older zarr accepts it and the commit's own check
    # names the axis
    message = str(info.value)
    assert message.startswith("'a/zarr.json' ") and message.endswith("Nothing was committed")
    assert "[4, 0]" in message or "chunk length 0 on axis 1 of length 6" in message


def _repo() -> Repository:
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    s.commit("base")
    return repo


def test_committing_to_a_deleted_branch_is_refused() -> None:
    repo = _repo()
    repo.create_branch("dev", repo.lookup_branch("main"))
    s = repo.writable_session("dev")
    zarr.open_array(s.store, path="a")[:] = 1
    repo.delete_branch("dev")
    with pytest.raises(NotFoundError, match="branch 'dev' was deleted; nothing was committed"):
        s.commit("lost")


def test_one_rebase_is_enough_for_one_commit_landed_first() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="a")[:2] = 1
    zarr.open_array(two.store, path="a")[2:] = 2
    first = one.commit("one")
    sid = two.commit("two", rebase_tries=1)
    assert [s.id for s in repo.ancestry(snapshot_id=sid)][:2] == [sid, first]
    stale = repo.writable_session("main")
    zarr.open_array(stale.store, path="a")[:2] = 3
    mover = repo.writable_session("main")
    zarr.open_array(mover.store, path="a")[2:] = 4
    mover.commit("moves the tip")
    with pytest.raises(ConflictError, match="rebase_tries=0 never rebases") as info:
        stale.commit("stale", rebase_tries=0)
    assert info.value.kind == ErrorKind.COMMIT_CONFLICT
