"""Wrote tests/data/format1-repo with icechunk_dask at commit d0e1eaa (format version 1).

Kept for the record: it only runs against format-1 code (it shrinks the hash-shard size
that format 2 no longer has). Usage: python tests/data/make_format1_repo.py <dir>
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from icechunk_dask import Repository, local_filesystem_storage

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
storage = local_filesystem_storage(out, durable=False)
repo = Repository.create(storage)
# small shards so that the node is split by hash (format 1's layout)
object.__setattr__(repo.config, "manifest_shard_size", 4)
s = repo.writable_session("main")
root = zarr.open_group(s.store, mode="w", zarr_format=3)
root.attrs["title"] = "format 1 fixture"
a = root.create_array(
    "grid", shape=(6, 8), chunks=(2, 2), dtype="i4", fill_value=-1, compressors=None
)
a[:] = np.arange(48, dtype="i4").reshape(6, 8)
b = root.create_array("sub/tiny", shape=(3,), chunks=(1,), dtype="u1")  # inline chunks
b[:] = [1, 2, 3]
first = s.commit("first")
repo.create_tag("v1", first)
s = repo.writable_session("main")
a = zarr.open_array(s.store, path="grid")
a[0:2, 0:2] = -1  # deletes that chunk (fill value)
a[4:6, 6:8] = 100
s.commit("second")
repo.create_branch("dev", first)
print(json.dumps({"first": first, "main": repo.lookup_branch("main")}))
