"""Google Cloud Storage: configuration only.

No local GCS server here honours the generation precondition that create-only
writes rely on (checked: ``gcp-storage-emulator`` has no precondition support
and no XML listing; ``fake-gcs-server`` rejects obstore's XML uploads), so the
backend's reads, writes and races are not tested against a server; see
docs/storage.md. The shared object-store code is the one tested on SeaweedFS
and Azurite.
"""

from __future__ import annotations

import pickle
import sys

import pytest

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage import GCSStorage, gcs_storage


def test_gcs_storage_validates_arguments() -> None:
    with pytest.raises(InvalidInputError, match="bucket"):
        gcs_storage(bucket="")
    with pytest.raises(InvalidInputError, match="prefix"):
        gcs_storage(bucket="b/sub")
    with pytest.raises(InvalidInputError, match="one credential source"):
        gcs_storage(bucket="b", service_account_key="{}", anonymous=True)
    with pytest.raises(InvalidInputError, match="allow_http"):
        gcs_storage(bucket="b", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(InvalidInputError, match="max_retries"):
        gcs_storage(bucket="b", max_retries=-1)


def test_gcs_storage_names_and_pickles_its_location() -> None:
    storage = gcs_storage(bucket="b", prefix="/repos/x/", anonymous=True, request_timeout=9)
    assert storage.url == "gs://b/repos/x"
    assert (storage.bucket, storage.prefix) == ("b", "repos/x")
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, GCSStorage) and clone == storage and hash(clone) == hash(storage)
    assert clone.requests.request_timeout == 9
    keyed = gcs_storage(bucket="b", service_account_key='{"private_key": "SECRET"}')
    assert "SECRET" not in repr(keyed)


def test_gcs_client_is_configured() -> None:
    storage = gcs_storage(
        bucket="b",
        prefix="p",
        anonymous=True,
        endpoint_url="http://127.0.0.1:1",
        allow_http=True,
        max_retries=2,
    )
    client = storage._store()
    assert client.config["base_url"] == "http://127.0.0.1:1"
    assert client.config["skip_signature"] in (True, "true")
    assert client.retry_config["max_retries"] == 2
    assert client.prefix == "p"


def test_gcs_without_obstore_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = gcs_storage(bucket="b", anonymous=True)
    monkeypatch.setitem(sys.modules, "obstore", None)
    with pytest.raises(ImportError, match=r"pip install icechunk-dask\[gcs\]"):
        storage.check_usable()
