"""Shared pytest configuration: the local S3 server fixtures."""

from __future__ import annotations

from tests.s3_server import s3_bucket, s3_server  # noqa: F401
