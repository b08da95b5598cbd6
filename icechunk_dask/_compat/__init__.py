"""Every import of a dependency's private internals, one small module per dependency.

The rest of the package imports zarr, dask and xarray internals only from
here, so that a release that moves one breaks in exactly one place, and
``tests/test_compat.py`` names it.
"""
