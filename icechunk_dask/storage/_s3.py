"""S3 storage on obstore (optional extra ``s3``).

Everything but the client configuration is shared with the other object
stores (:mod:`icechunk_dask.storage._obstore`): create-only writes use
``If-None-Match: *`` and read the key back when the outcome is unclear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage._obstore import ObstoreStorage, detail, env_flag, import_obstore
from icechunk_dask.storage._requests import RequestSettings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

__all__ = ["S3Storage", "s3_storage"]


@dataclass(frozen=True)
class _S3Settings:
    """Everything needed to rebuild the client in another process."""

    bucket: str
    prefix: str
    region: str | None
    endpoint_url: str | None
    allow_http: bool
    access_key_id: str | None
    secret_access_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    anonymous: bool
    from_env: bool
    requests: RequestSettings = field(default_factory=RequestSettings)


class S3Storage(ObstoreStorage):
    """Objects in an S3 (or S3-compatible) bucket, through obstore.

    Create with :func:`s3_storage`. The storage pickles as its settings
    (credentials included only if they were given explicitly); the obstore
    client is rebuilt lazily in the process that uses it, where credentials
    from the environment are read.

    Parameters
    ----------
    settings : _S3Settings
        Validated settings, as built by :func:`s3_storage` (internal: create the
        storage with that function).
    """

    _missing_container_markers = ("NoSuchBucket",)
    _settings: _S3Settings

    def __init__(self, settings: _S3Settings) -> None:
        super().__init__(settings)

    @property
    def url(self) -> str:
        """``s3://<bucket>/<prefix>`` (without the prefix when it is empty)."""
        s = self._settings
        return f"s3://{s.bucket}/{s.prefix}" if s.prefix else f"s3://{s.bucket}"

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
        return f"S3Storage({self.url!r}{extra})"

    def _location(self) -> tuple[object, ...]:
        s = self._settings
        return (s.bucket, s.prefix, s.endpoint_url)

    def _build_client(self) -> Any:
        import_obstore("s3")
        from obstore.store import S3Store

        s = self._settings
        config: S3Config = {}
        if s.region is not None:
            config["region"] = s.region
        if s.endpoint_url is not None:
            config["endpoint"] = s.endpoint_url
        if s.access_key_id is not None:
            config["access_key_id"] = s.access_key_id
        if s.secret_access_key is not None:
            config["secret_access_key"] = s.secret_access_key
        if s.session_token is not None:
            config["session_token"] = s.session_token
        if s.anonymous:
            config["skip_signature"] = True
        client_options: ClientConfig = s.requests._client_options()
        if s.allow_http or env_flag("AWS_ALLOW_HTTP"):
            client_options["allow_http"] = True
        try:
            return S3Store(
                s.bucket,
                prefix=s.prefix or None,
                config=config,
                client_options=client_options,
                retry_config=s.requests._retry_config(),
            )
        except Exception as e:
            raise InvalidInputError(f"cannot configure S3 storage {self.url}: {detail(e)}") from e


def s3_storage(
    *,
    bucket: str,
    prefix: str = "",
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool = False,
    max_retries: int = RequestSettings.max_retries,
    retry_timeout: float = RequestSettings.retry_timeout,
    initial_backoff: float = RequestSettings.initial_backoff,
    max_backoff: float = RequestSettings.max_backoff,
    connect_timeout: float = RequestSettings.connect_timeout,
    request_timeout: float = RequestSettings.request_timeout,
    max_concurrent_requests: int = RequestSettings.max_concurrent_requests,
) -> S3Storage:
    """Storage in an S3 bucket (or an S3-compatible server), via obstore.

    Needs the optional dependency obstore (``pip install icechunk-dask[s3]``);
    it is imported when the storage is first used, not here.

    Credentials come from exactly one source: explicit keys
    (``access_key_id`` + ``secret_access_key``, optionally ``session_token``),
    ``anonymous=True`` (unsigned requests, public buckets), or the environment
    (``AWS_*`` variables, web identity, container or instance metadata, as
    obstore supports them). The environment is used when neither keys nor
    ``anonymous`` are given; ``from_env=True`` only makes that explicit. obstore
    always reads other ``AWS_*`` settings (region, endpoint) from the
    environment; arguments given here override them.

    Parameters
    ----------
    bucket : str
        The bucket name.
    prefix : str, optional
        Key prefix of the repository inside the bucket (leading and trailing
        ``/`` are ignored); ``""`` (default) uses the bucket root.
    region : str, optional
        The bucket's region; taken from the environment (or ``us-east-1``) if
        omitted.
    endpoint_url : str, optional
        URL of an S3-compatible server, e.g. ``"http://127.0.0.1:9000"``.
    allow_http : bool, optional
        Allow plain ``http://`` endpoints (local test servers); also allowed when
        the process's environment has ``AWS_ALLOW_HTTP=true``.
    access_key_id, secret_access_key, session_token : str, optional
        Explicit credentials. They travel with the pickled storage (to Dask
        workers); leave them out to have every process read its own from the
        environment.
    anonymous : bool, optional
        Send unsigned requests (default ``False``).
    from_env : bool, optional
        Take credentials from the environment (the default when no keys are
        given).
    max_retries : int, optional
        Retries of a failed request (5xx, 429, connection lost, timeout).
        Default 10.
    retry_timeout : float, optional
        Seconds after the first attempt when no further retry starts. Default 120.
    initial_backoff, max_backoff : float, optional
        First and longest wait between attempts, in seconds; waits double and
        are randomised (jitter). Defaults 0.1 and 15.
    connect_timeout : float, optional
        Seconds to establish a connection. Default 5.
    request_timeout : float, optional
        Seconds for a whole request including the response body; a stalled
        transfer fails after this long and is retried. Default 60.
    max_concurrent_requests : int, optional
        Operations in flight at once per process (each Dask worker process has
        its own limit). Default 64.

    Returns
    -------
    S3Storage
        The storage; picklable, the client is created lazily in each process.

    Raises
    ------
    InvalidInputError
        If the bucket name is empty or contains ``/``, the credential options
        contradict each other, a plain ``http://`` endpoint is given without
        ``allow_http``, or a setting is out of range.

    Notes
    -----
    ``put_if_absent`` relies on the server honouring ``If-None-Match: *`` on
    PUT (AWS S3 since 2024, MinIO, SeaweedFS, ...). A server that ignores
    the header silently breaks the exactly-one-winner guarantee. See
    ``docs/storage.md`` for what is proven against which server.

    Examples
    --------
    >>> storage = s3_storage(bucket="my-bucket", prefix="repos/era5", region="eu-west-1")
    >>> storage.url
    's3://my-bucket/repos/era5'
    """
    if not bucket or "/" in bucket:
        raise InvalidInputError(
            f"invalid S3 bucket name {bucket!r}: give the bare bucket name and put the path "
            "inside the bucket in prefix="
        )
    has_keys = access_key_id is not None or secret_access_key is not None
    if (access_key_id is None) != (secret_access_key is None):
        raise InvalidInputError(
            "give both access_key_id and secret_access_key, or neither (to use the environment)"
        )
    if session_token is not None and not has_keys:
        raise InvalidInputError("session_token needs access_key_id and secret_access_key")
    if sum([has_keys, anonymous, from_env]) > 1:
        raise InvalidInputError(
            "choose one credential source: explicit keys, anonymous=True or from_env=True"
        )
    plain_http = endpoint_url is not None and endpoint_url.startswith("http://")
    if plain_http and not (allow_http or env_flag("AWS_ALLOW_HTTP")):
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
    settings = _S3Settings(
        bucket=bucket,
        prefix=prefix.strip("/"),
        region=region,
        endpoint_url=endpoint_url,
        allow_http=allow_http,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        anonymous=anonymous,
        from_env=from_env,
        requests=requests,
    )
    return S3Storage(settings)
