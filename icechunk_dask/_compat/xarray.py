"""xarray internals used by ``icechunk_dask.xarray.to_zarr`` (xarray >= 2026.9).

``to_zarr`` reuses xarray's own Zarr writer so that modes, ``region="auto"``,
appends and encodings behave exactly as ``Dataset.to_zarr``.
"""

from __future__ import annotations

from xarray.backends.api import DATAARRAY_NAME, DATAARRAY_VARIABLE
from xarray.backends.common import ArrayWriter
from xarray.backends.writers import _validate_dataset_names, dump_to_store
from xarray.backends.zarr import ZarrStore, _choose_default_mode

__all__ = [
    "DATAARRAY_NAME",
    "DATAARRAY_VARIABLE",
    "ArrayWriter",
    "ZarrStore",
    "choose_default_mode",
    "dump_to_store",
    "validate_dataset_names",
]

choose_default_mode = _choose_default_mode
validate_dataset_names = _validate_dataset_names
