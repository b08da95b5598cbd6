"""Shared pytest configuration: the local S3 server fixtures and the Hypothesis profiles."""

from __future__ import annotations

from icechunk_dask.testing import register_profiles
from tests.s3_server import s3_bucket, s3_server  # noqa: F401

# Hypothesis profiles "dev" (default), "ci" (when CI is set; derandomised) and "long";
# choose one with HYPOTHESIS_PROFILE=<name>.
register_profiles()
