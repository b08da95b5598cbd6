"""Google Cloud Storage on obstore (optional extra ``gcs``).

Everything but the client configuration is shared with the other object
stores (:mod:`icechunk_dask.storage._obstore`): create-only writes send the
generation precondition ``x-goog-if-generation-match: 0`` (GCS's
``ifGenerationMatch=0``) and read the key back when the outcome is unclear.
No local emulator honours that precondition for obstore's requests, so the
exactly-one-winner guarantee on GCS rests on the service's documented
behaviour, not on a test here (see ``docs/storage.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage._obstore import ObstoreStorage, detail, env_flag, import_obstore
from icechunk_dask.storage._requests import RequestSettings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, GCSConfig

__all__ = ["GCSStorage", "gcs_storage"]


@dataclass(frozen=True)
class _GCSSettings:
    """Everything needed to rebuild the client in another process."""

    bucket: str
    prefix: str
    service_account_path: str | None
    service_account_key: str | None = field(repr=False)
    endpoint_url: str | None
    allow_http: bool
    anonymous: bool
    requests: RequestSettings = field(default_factory=RequestSettings)


class GCSStorage(ObstoreStorage):
    """Objects in a Google Cloud Storage bucket, through obstore.

    Create with :func:`gcs_storage`. It pickles as its settings (a service
    account key only if given explicitly); the client is rebuilt lazily in each
    process, where credentials from the environment are read.

    Parameters
    ----------
    settings : _GCSSettings
        Validated settings, as built by :func:`gcs_storage` (internal: create the
        storage with that function).
    """

    _missing_container_markers = ("NoSuchBucket", "bucket does not exist")
    _settings: _GCSSettings

    def __init__(self, settings: _GCSSettings) -> None:
        super().__init__(settings)

    @property
    def url(self) -> str:
        """``gs://<bucket>/<prefix>`` (without the prefix when it is empty)."""
        s = self._settings
        return f"gs://{s.bucket}/{s.prefix}" if s.prefix else f"gs://{s.bucket}"

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._settings.bucket

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket (no leading or trailing ``/``)."""
        return self._settings.prefix

    @property
    def _container(self) -> str:
        return self._settings.bucket

    def __repr__(self) -> str:
        endpoint = self._settings.endpoint_url
        extra = f", endpoint_url={endpoint!r}" if endpoint else ""
        return f"GCSStorage({self.url!r}{extra})"

    def _location(self) -> tuple[object, ...]:
        s = self._settings
        return (s.bucket, s.prefix, s.endpoint_url)

    def _build_client(self) -> Any:
        import_obstore("gcs")
        from obstore.store import GCSStore

        s = self._settings
        config: GCSConfig = {}
        if s.service_account_path is not None:
            config["service_account"] = s.service_account_path
        if s.service_account_key is not None:
            config["service_account_key"] = s.service_account_key
        if s.endpoint_url is not None:
            config["base_url"] = s.endpoint_url
        if s.anonymous:
            config["skip_signature"] = True
        client_options: ClientConfig = s.requests._client_options()
        if s.allow_http or env_flag("GOOGLE_ALLOW_HTTP"):
            client_options["allow_http"] = True
        try:
            return GCSStore(
                s.bucket,
                prefix=s.prefix or None,
                config=config,
                client_options=client_options,
                retry_config=s.requests._retry_config(),
            )
        except Exception as e:
            raise InvalidInputError(f"cannot configure GCS storage {self.url}: {detail(e)}") from e


def gcs_storage(
    *,
    bucket: str,
    prefix: str = "",
    service_account_path: str | None = None,
    service_account_key: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    anonymous: bool = False,
    max_retries: int = RequestSettings.max_retries,
    retry_timeout: float = RequestSettings.retry_timeout,
    initial_backoff: float = RequestSettings.initial_backoff,
    max_backoff: float = RequestSettings.max_backoff,
    connect_timeout: float = RequestSettings.connect_timeout,
    request_timeout: float = RequestSettings.request_timeout,
    max_concurrent_requests: int = RequestSettings.max_concurrent_requests,
) -> GCSStorage:
    """Storage in a Google Cloud Storage bucket, via obstore.

    Needs the optional dependency obstore (``pip install icechunk-dask[gcs]``),
    imported when the storage is first used.

    Credentials come from one source: a service account (a key file path
    valid on every machine, or the key's JSON text), ``anonymous=True``
    (unsigned requests, public buckets), or the environment
    (``GOOGLE_SERVICE_ACCOUNT``, ``GOOGLE_SERVICE_ACCOUNT_KEY``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server on Google Cloud).

    Parameters
    ----------
    bucket : str
        The bucket name.
    prefix : str
        Key prefix of the repository inside the bucket; ``""`` uses its root.
    service_account_path : str, optional
        Path of a service account key file (must exist on every worker).
    service_account_key : str, optional
        The service account key itself (JSON). It travels with the pickled
        storage (to Dask workers); prefer the environment.
    endpoint_url : str, optional
        Another base URL for the service (a proxy or an emulator).
    allow_http : bool
        Allow a plain ``http://`` endpoint; also allowed when the process's
        environment has ``GOOGLE_ALLOW_HTTP=true``.
    anonymous : bool
        Send unsigned requests.
    max_retries, retry_timeout, initial_backoff, max_backoff : int or float
        Retries of failed requests, as for :func:`~icechunk_dask.storage.s3_storage`
        (defaults 10, 120 s, 0.1 s, 15 s).
    connect_timeout, request_timeout : float
        Seconds to connect and for a whole request (defaults 5 and 60).
    max_concurrent_requests : int
        Operations in flight at once per process (default 64).

    Returns
    -------
    GCSStorage
        The storage; picklable, the client is created lazily in each process.

    Raises
    ------
    InvalidInputError
        If the bucket name is empty or contains ``/``, credential options
        contradict each other, a plain ``http://`` endpoint is given without
        ``allow_http``, or a setting is out of range.

    Notes
    -----
    ``put_if_absent`` relies on GCS's generation precondition
    (``ifGenerationMatch=0``), which the service documents as atomic. No local
    GCS emulator tested here honours it, so this backend's concurrency
    guarantee is not proven by this project's tests (see ``docs/storage.md``).
    """
    if not bucket or "/" in bucket:
        raise InvalidInputError(
            f"invalid GCS bucket name {bucket!r}: give the bare bucket name and put the path "
            "inside the bucket in prefix="
        )
    given = [service_account_path is not None, service_account_key is not None, anonymous]
    if sum(given) > 1:
        raise InvalidInputError(
            "choose one credential source: service_account_path, service_account_key or "
            "anonymous=True (or none of them, to use the environment)"
        )
    plain_http = endpoint_url is not None and endpoint_url.startswith("http://")
    if plain_http and not (allow_http or env_flag("GOOGLE_ALLOW_HTTP")):
        raise InvalidInputError(
            f"the endpoint {endpoint_url!r} uses plain http; pass allow_http=True to allow it"
        )
    requests = RequestSettings(
        max_retries=max_retries,
        retry_timeout=retry_timeout,
        initial_backoff=initial_backoff,
        max_backoff=max_backoff,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        max_concurrent_requests=max_concurrent_requests,
    )
    return GCSStorage(
        _GCSSettings(
            bucket=bucket,
            prefix=prefix.strip("/"),
            service_account_path=service_account_path,
            service_account_key=service_account_key,
            endpoint_url=endpoint_url,
            allow_http=allow_http,
            anonymous=anonymous,
            requests=requests,
        )
    )
