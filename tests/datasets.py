"""Small synthetic datasets built locally (no downloads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def rasm_like(ntime: int = 24, ny: int = 20, nx: int = 27, seed: int = 0) -> xr.Dataset:
    """A dataset shaped like xarray's "rasm" tutorial data, built locally.

    ``Tair(time, y, x)`` float64 with NaNs over "ocean", 2-D ``xc``/``yc``
    coordinates, a monthly ``time`` coordinate and attributes.
    """
    rng = np.random.default_rng(seed)
    time = pd.date_range("1980-09-16T12:00", periods=ntime, freq="MS")
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    xc = 189.2 + 0.5 * xx + 0.1 * yy
    yc = 16.5 + 0.4 * yy + 0.05 * xx
    tair = 10 + 15 * np.sin(np.arange(ntime) / 12 * 2 * np.pi)[:, None, None]
    tair = tair + rng.normal(0, 2, size=(ntime, ny, nx))
    ocean = (xx + yy) % 7 == 0
    tair[:, ocean] = np.nan
    return xr.Dataset(
        {
            "Tair": (
                ("time", "y", "x"),
                tair,
                {"units": "C", "long_name": "Surface air temperature", "type_preferred": "double"},
            )
        },
        coords={
            "time": ("time", time),
            "xc": (
                ("y", "x"),
                xc,
                {"long_name": "longitude of grid cell center", "units": "degrees_east"},
            ),
            "yc": (
                ("y", "x"),
                yc,
                {"long_name": "latitude of grid cell center", "units": "degrees_north"},
            ),
        },
        attrs={"title": "synthetic rasm-like data", "institution": "icechunk_dask tests"},
    )
