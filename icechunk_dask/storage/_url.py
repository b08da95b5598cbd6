"""Name a storage by URL: ``s3://``, ``gs://``, ``az://``, ``file://``, ``memory://`` or a path."""

from __future__ import annotations

import inspect
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage._azure import azure_storage
from icechunk_dask.storage._base import Storage
from icechunk_dask.storage._gcs import gcs_storage
from icechunk_dask.storage._local import local_filesystem_storage
from icechunk_dask.storage._memory import in_memory_storage
from icechunk_dask.storage._s3 import s3_storage

__all__ = ["storage_from_url"]

#: scheme -> (constructor, keyword that takes the URL's host part)
_OBJECT_STORES: dict[str, tuple[Callable[..., Storage], str]] = {
    "s3": (s3_storage, "bucket"),
    "gs": (gcs_storage, "bucket"),
    "gcs": (gcs_storage, "bucket"),
    "az": (azure_storage, "container"),
    "azure": (azure_storage, "container"),
}
_SCHEMES = "s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path, memory:// or a local path"


def _check_options(
    url: str, factory: Callable[..., Storage], options: dict[str, Any], taken: set[str]
) -> None:
    accepted = set(inspect.signature(factory).parameters) - taken
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {unknown} for {url!r}; this kind of storage accepts "
            f"{sorted(accepted) or 'no options'}"
        )


def storage_from_url(url: str | os.PathLike[str], **options: Any) -> Storage:
    """Open the storage a URL names.

    - ``s3://bucket/prefix``: :func:`s3_storage`;
    - ``gs://bucket/prefix`` (or ``gcs://``): :func:`gcs_storage`;
    - ``az://container/prefix`` (or ``azure://``): :func:`azure_storage`;
    - ``file:///absolute/path`` or a plain path: :func:`local_filesystem_storage`;
    - ``memory://``: a *new* :func:`in_memory_storage` on every call.

    Credentials are not part of the URL: object stores read them from the
    environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_STORAGE_*``) unless given as
    options.

    Parameters
    ----------
    url : str or os.PathLike
        The location.
    **options
        Keyword arguments of the constructor the scheme maps to (for example
        ``endpoint_url``, ``region``, ``allow_http``, ``anonymous``,
        ``max_retries`` for ``s3://``; ``account_name`` for ``az://``;
        ``durable`` for local paths).

    Returns
    -------
    Storage
        The storage (not yet contacted).

    Raises
    ------
    InvalidInputError
        For an unknown scheme, an option the scheme does not take, a URL without
        a bucket or container (or with a query or fragment), a ``file://`` URL
        naming a remote host, or options the constructor refuses.
    StorageError
        For a local path that cannot be examined (see
        :func:`local_filesystem_storage`).

    Examples
    --------
    >>> storage_from_url("s3://my-bucket/repos/era5", region="eu-west-1").url
    's3://my-bucket/repos/era5'
    >>> storage_from_url("memory://").process_local
    True
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:  # type: ignore[redundant-expr]  # untyped callers
        raise InvalidInputError(f"expected a storage URL or path, got {url!r}; use {_SCHEMES}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _OBJECT_STORES:
        factory, host_keyword = _OBJECT_STORES[scheme]
        _check_options(url, factory, options, {host_keyword, "prefix"})
        if not parts.netloc or parts.query or parts.fragment:
            raise InvalidInputError(
                f"invalid storage URL {url!r}: expected {scheme}://<{host_keyword}>/<prefix> "
                "(settings go in keyword options, not in the URL)"
            )
        prefix = urllib.parse.unquote(parts.path).strip("/")
        return factory(**{host_keyword: parts.netloc, "prefix": prefix}, **options)
    if scheme == "memory":
        _check_options(url, in_memory_storage, options, set())
        return in_memory_storage()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(
                f"invalid file URL {url!r}: remote hosts are not supported; use file:///path"
            )
        _check_options(url, local_filesystem_storage, options, {"path"})
        return local_filesystem_storage(Path(urllib.parse.unquote(parts.path)), **options)
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise InvalidInputError(
            f"unsupported storage URL scheme {scheme!r} in {url!r}; use {_SCHEMES}"
        )
    _check_options(url, local_filesystem_storage, options, {"path"})
    return local_filesystem_storage(url, **options)
