"""Every module imports on its own (no hidden import cycle), and importing is light.

The layer contract itself is checked by import-linter (``lint-imports``, the
``[tool.importlinter]`` section of pyproject.toml); this test imports each
module first, in a fresh interpreter state for the package, so that a cycle
that only breaks for one entry point fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest
import xarray as xr

import icechunk_dask

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(icechunk_dask.__path__, "icechunk_dask.")
    if m.name != "icechunk_dask.__main__"
)


def _forget_package() -> None:
    for name in [n for n in sys.modules if n == "icechunk_dask" or n.startswith("icechunk_dask.")]:
        del sys.modules[name]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first(module: str) -> None:
    saved = {n: m for n, m in sys.modules.items() if n.startswith("icechunk_dask")}
    # importing icechunk_dask.xarray again registers its accessors again
    accessors = {c: c.__dict__.get("icechunk_dask") for c in (xr.Dataset, xr.DataArray)}
    try:
        _forget_package()
        for cls, accessor in accessors.items():
            if accessor is not None:
                delattr(cls, "icechunk_dask")
        importlib.import_module(module)
    finally:
        _forget_package()
        sys.modules.update(saved)
        for cls, accessor in accessors.items():
            if "icechunk_dask" in cls.__dict__:
                delattr(cls, "icechunk_dask")
            if accessor is not None:
                cls.icechunk_dask = accessor


def test_importing_the_package_and_the_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys, icechunk_dask, icechunk_dask.cli; "
        "heavy = [m for m in ('zarr', 'dask', 'xarray', 'distributed', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_to_zarr_registers_the_accessor_on_first_use() -> None:
    code = (
        "import icechunk_dask, xarray as xr; "
        "assert not hasattr(xr.Dataset(), 'icechunk_dask'); "
        "icechunk_dask.to_zarr; "
        "assert hasattr(xr.Dataset(), 'icechunk_dask')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
