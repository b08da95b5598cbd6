"""Mutation-campaign tests for icechunk_dask/_listing.py (issue 13, part 4b)."""

from __future__ import annotations

import zarr

from icechunk_dask import Repository, RepositoryConfig, Session, in_memory_storage
from icechunk_dask._sync import run


async def _names(session: Session, prefix: str) -> set[str]:
    return {k async for k in session.store.list_dir(prefix)}


def test_list_dir_inside_a_chunk_grid_names_only_what_is_there() -> None:
    """A directory of a chunk grid lists its own entries, not those of its siblings.

    Found while writing these tests: ``list_dir("a/c/1")`` cut the directory's length off
    every chunk key of the array (``"a/c/0/1"`` gave the name ``"1"``).
    """
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    s = repo.writable_session("main")
    array = zarr.create_array(
        s.store, name="a", shape=(24, 4), chunks=(2, 2), dtype="i4", fill_value=0
    )
    array[0:2, 0:2] = 1  # a/c/0/0
    array[2:4, 2:4] = 2  # a/c/1/1
    array[20:22, 0:2] = 3  # a/c/10/0
    s.commit("three chunks")
    for view in (repo.readonly_session("main"), repo.writable_session("main")):
        assert run(_names(view, "a/c")) == {"0", "1", "10"}
        assert run(_names(view, "a/c/0")) == {"0"}
        assert run(_names(view, "a/c/1")) == {"1"}
        assert run(_names(view, "a/c/10")) == {"0"}
        assert run(_names(view, "a/c/2")) == set()
        assert run(view._workspace.list_dir("a/c/1")) == {"1"}
    s = repo.writable_session("main")
    run(s.store.delete("a/c/1/1"))
    assert run(_names(s, "a/c/1")) == set()
    assert run(_names(s, "a/c/0")) == {"0"}
