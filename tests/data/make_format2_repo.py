"""Wrote tests/data/format2-repo with icechunk_dask at commit 4783c4a (format version 2).

Kept for the record: format 2 is the last format whose object bodies are zlib-compressed.
The repository has boxes of chunk coordinates (explicit splits and the default slabs),
stacked layers from appends, a box compacted after too many layers, packed chunks and
inline chunks, a deleted chunk, a tag, a second branch and an array removed with
``delete_dir``. Usage: python tests/data/make_format2_repo.py <dir>
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from icechunk_dask import Repository, RepositoryConfig, local_filesystem_storage

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
storage = local_filesystem_storage(out, durable=False)
config = RepositoryConfig(
    inline_chunk_threshold_bytes=8,
    manifest_box_refs=4,
    manifest_splits={"grid": {0: 2}},
    manifest_max_layers=2,
)
repo = Repository.create(storage, config=config)
s = repo.writable_session("main")
root = zarr.open_group(s.store, mode="w", zarr_format=3)
root.attrs["title"] = "format 2 fixture"
grid = root.create_array(
    "grid", shape=(6, 8), chunks=(2, 2), dtype="i4", fill_value=-1, compressors=None
)
grid[:] = np.arange(48, dtype="i4").reshape(6, 8)
series = root.create_array("series", shape=(0, 3), chunks=(1, 3), dtype="f8", fill_value=0)
tiny = root.create_array("sub/tiny", shape=(3,), chunks=(1,), dtype="u1")  # inline chunks
tiny[:] = [1, 2, 3]
root.create_array("gone", shape=(4,), chunks=(2,), dtype="i2")[:] = [1, 2, 3, 4]
first = s.commit("first")
repo.create_tag("v1", first)
for step in range(4):  # appends stack layers; the third compacts its box
    s = repo.writable_session("main")
    arr = zarr.open_array(s.store, path="series")
    arr.resize((step + 1, 3))
    arr[step] = [step, step + 0.5, step + 0.25]
    s.commit(f"append {step}")
s = repo.writable_session("main")
grid = zarr.open_array(s.store, path="grid")
grid[0:2, 0:2] = -1  # deletes that chunk (fill value)
grid[4:6, 6:8] = 100
zarr.open_group(s.store).__delitem__("gone")
s.commit("last")
repo.create_branch("dev", first)
print(json.dumps({"first": first, "main": repo.lookup_branch("main")}))
