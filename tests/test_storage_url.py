"""storage_from_url: every scheme, clear errors, and real servers reached by URL."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage import (
    AzureStorage,
    GCSStorage,
    InMemoryStorage,
    LocalFileSystemStorage,
    S3Storage,
    storage_from_url,
)
from tests.servers._azurite import AzuriteServer
from tests.servers._seaweed import SeaweedServer

pytest_plugins = ["tests.servers.azurite", "tests.servers.seaweed"]


def test_s3_url() -> None:
    storage = storage_from_url(
        "s3://bucket/repos/era5/", region="eu-west-1", anonymous=True, max_retries=3
    )
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.url) == (
        "bucket",
        "repos/era5",
        "s3://bucket/repos/era5",
    )
    assert storage.requests.max_retries == 3
    assert storage_from_url("s3://bucket").url == "s3://bucket"


@pytest.mark.parametrize("scheme", ["gs", "gcs"])
def test_gcs_url(scheme: str) -> None:
    storage = storage_from_url(f"{scheme}://bucket/a/b", anonymous=True)
    assert isinstance(storage, GCSStorage)
    assert storage.url == "gs://bucket/a/b"


@pytest.mark.parametrize("scheme", ["az", "azure", "AZ"])
def test_azure_url(scheme: str) -> None:
    storage = storage_from_url(f"{scheme}://container/p", account_name="acct")
    assert isinstance(storage, AzureStorage)
    assert (storage.container, storage.prefix) == ("container", "p")


def test_local_urls_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (f"file://{tmp_path}/repo", f"file://localhost{tmp_path}/repo", tmp_path / "repo"):
        storage = storage_from_url(url)
        assert isinstance(storage, LocalFileSystemStorage)
        assert storage.root == tmp_path / "repo"
    spaced = storage_from_url(f"file://{tmp_path}/with%20space", durable=False)
    assert isinstance(spaced, LocalFileSystemStorage)
    assert spaced.root == tmp_path / "with space"
    monkeypatch.chdir(tmp_path)
    relative = storage_from_url("data/repo")
    assert isinstance(relative, LocalFileSystemStorage)
    assert Path(relative.root).resolve() == (tmp_path / "data" / "repo").resolve()


def test_memory_url_is_a_new_storage_each_time() -> None:
    one, two = storage_from_url("memory://"), storage_from_url("memory://scratch")
    assert isinstance(one, InMemoryStorage) and isinstance(two, InMemoryStorage)
    assert one != two


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://example.com/repo", "unsupported storage URL scheme 'http'"),
        ("ftp://host/x", "use s3://bucket/prefix"),
        ("s3:///no-bucket", "expected s3://<bucket>/<prefix>"),
        ("s3://b/p?endpoint_url=x", "keyword options, not in the URL"),
        ("file://otherhost/x", "remote hosts"),
        ("", "expected a storage URL"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        storage_from_url(url)


def test_unknown_options_are_named() -> None:
    with pytest.raises(InvalidInputError, match=r"\['endpoint'\].*endpoint_url"):
        storage_from_url("s3://b/p", endpoint="http://x")
    with pytest.raises(InvalidInputError, match=r"\['bucket'\]"):
        storage_from_url("s3://b/p", bucket="other")
    with pytest.raises(InvalidInputError, match="no options"):
        storage_from_url("memory://", durable=False)
    with pytest.raises(InvalidInputError, match=r"\['region'\].*durable"):
        storage_from_url("/tmp/x", region="eu")


@pytest.mark.seaweedfs
async def test_s3_url_with_credentials_from_the_environment(
    seaweed_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = seaweed_server.create_bucket()
    for name, value in seaweed_server.env().items():
        monkeypatch.setenv(name, value)
    storage = storage_from_url(f"s3://{bucket}/by/url")  # endpoint, region, keys: environment
    await storage.put("k", b"v")
    assert seaweed_server.secret_access_key.encode() not in pickle.dumps(storage)
    explicit = storage_from_url(
        f"s3://{bucket}",
        endpoint_url=seaweed_server.endpoint,
        allow_http=True,
        region="us-east-1",
    )
    assert await explicit.get("by/url/k") == b"v"


@pytest.mark.azurite
async def test_azure_url_on_azurite(
    azurite_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = azurite_server.create_container()
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite_server.account_key)
    storage = storage_from_url(
        f"az://{container}/by/url",
        account_name=azurite_server.account_name,
        endpoint_url=azurite_server.endpoint,
        allow_http=True,
    )
    await storage.put("k", b"v")
    assert await storage.get("k") == b"v"
    assert azurite_server.account_key.encode() not in pickle.dumps(storage)


def test_object_store_urls_with_settings_pickle(tmp_path: Path) -> None:
    storage = storage_from_url("s3://b/p", anonymous=True, max_concurrent_requests=7)
    clone: Any = pickle.loads(pickle.dumps(storage))
    assert clone == storage and clone.requests.max_concurrent_requests == 7
