"""Byte storage backends: local filesystem (default), in-memory, and object stores.

The object stores go through obstore: S3 (extra ``s3``), Google Cloud Storage (extra
``gcs``) and Azure Blob Storage (extra ``azure``); they share :class:`RequestSettings`
(retries, timeouts, concurrency). :func:`storage_from_url` opens any backend by URL.
:class:`FaultyStorage` wraps any backend to inject failures in tests.
"""

from __future__ import annotations

from icechunk_dask.storage._azure import AzureStorage, azure_storage
from icechunk_dask.storage._base import ObjectInfo, ObjectPage, Storage
from icechunk_dask.storage._faulty import FaultyStorage
from icechunk_dask.storage._gcs import GCSStorage, gcs_storage
from icechunk_dask.storage._local import LocalFileSystemStorage, local_filesystem_storage
from icechunk_dask.storage._memory import InMemoryStorage, in_memory_storage
from icechunk_dask.storage._requests import RequestSettings
from icechunk_dask.storage._s3 import S3Storage, s3_storage
from icechunk_dask.storage._url import storage_from_url

__all__ = [
    "AzureStorage",
    "FaultyStorage",
    "GCSStorage",
    "InMemoryStorage",
    "LocalFileSystemStorage",
    "ObjectInfo",
    "ObjectPage",
    "RequestSettings",
    "S3Storage",
    "Storage",
    "azure_storage",
    "gcs_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "s3_storage",
    "storage_from_url",
]
