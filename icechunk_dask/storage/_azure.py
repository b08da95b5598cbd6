"""Azure Blob Storage on obstore (optional extra ``azure``).

Everything but the client configuration is shared with the other object
stores (:mod:`icechunk_dask.storage._obstore`): create-only writes send
``If-None-Match: *`` (the service answers 409 ``BlobAlreadyExists`` to the
losers) and read the key back when the outcome is unclear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage._obstore import ObstoreStorage, detail, env_flag, import_obstore
from icechunk_dask.storage._requests import RequestSettings

if TYPE_CHECKING:
    from obstore.store import AzureConfig, ClientConfig

__all__ = ["AzureStorage", "azure_storage"]


@dataclass(frozen=True)
class _AzureSettings:
    """Everything needed to rebuild the client in another process."""

    container: str
    prefix: str
    account_name: str | None
    account_key: str | None = field(repr=False)
    sas_token: str | None = field(repr=False)
    endpoint_url: str | None
    allow_http: bool
    anonymous: bool
    requests: RequestSettings = field(default_factory=RequestSettings)


class AzureStorage(ObstoreStorage):
    """Objects in an Azure Blob Storage container, through obstore.

    Create with :func:`azure_storage`. It pickles as its settings (an account
    key or SAS token only if given explicitly); the client is rebuilt lazily in
    each process, where credentials from the environment are read.

    Parameters
    ----------
    settings : _AzureSettings
        Validated settings, as built by :func:`azure_storage` (internal: create the
        storage with that function).
    """

    _missing_container_markers = ("ContainerNotFound",)
    _container_word = "container"
    _settings: _AzureSettings

    def __init__(self, settings: _AzureSettings) -> None:
        super().__init__(settings)

    @property
    def url(self) -> str:
        """``az://<container>/<prefix>`` (without the prefix when it is empty)."""
        s = self._settings
        return f"az://{s.container}/{s.prefix}" if s.prefix else f"az://{s.container}"

    @property
    def container(self) -> str:
        """The container name."""
        return self._settings.container

    @property
    def prefix(self) -> str:
        """The key prefix inside the container (no leading or trailing ``/``)."""
        return self._settings.prefix

    @property
    def _container(self) -> str:
        return self._settings.container

    def __repr__(self) -> str:
        s = self._settings
        extra = f", account_name={s.account_name!r}" if s.account_name else ""
        extra += f", endpoint_url={s.endpoint_url!r}" if s.endpoint_url else ""
        return f"AzureStorage({self.url!r}{extra})"

    def _location(self) -> tuple[object, ...]:
        s = self._settings
        return (s.container, s.prefix, s.account_name, s.endpoint_url)

    def _build_client(self) -> Any:
        import_obstore("azure")
        from obstore.store import AzureStore

        s = self._settings
        config: AzureConfig = {}
        if s.account_name is not None:
            config["account_name"] = s.account_name
        if s.account_key is not None:
            config["account_key"] = s.account_key
        if s.sas_token is not None:
            config["sas_key"] = s.sas_token
        if s.endpoint_url is not None:
            config["endpoint"] = s.endpoint_url
        if s.anonymous:
            config["skip_signature"] = True
        client_options: ClientConfig = s.requests._client_options()
        if s.allow_http or env_flag("AZURE_ALLOW_HTTP"):
            client_options["allow_http"] = True
        try:
            return AzureStore(
                s.container,
                prefix=s.prefix or None,
                config=config,
                client_options=client_options,
                retry_config=s.requests._retry_config(),
            )
        except Exception as e:
            raise InvalidInputError(
                f"cannot configure Azure storage {self.url}: {detail(e)}. The account name "
                "comes from account_name= or AZURE_STORAGE_ACCOUNT_NAME"
            ) from e


def azure_storage(
    *,
    container: str,
    prefix: str = "",
    account_name: str | None = None,
    account_key: str | None = None,
    sas_token: str | None = None,
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
) -> AzureStorage:
    """Storage in an Azure Blob Storage container, via obstore.

    Needs the optional dependency obstore (``pip install icechunk-dask[azure]``),
    imported when the storage is first used.

    Credentials come from one source: an explicit ``account_key`` or
    ``sas_token``, ``anonymous=True`` (unsigned requests, public containers), or
    the environment (``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``,
    a service principal ``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET``/
    ``AZURE_TENANT_ID``, workload or managed identity, as obstore supports them).

    Parameters
    ----------
    container : str
        The container name.
    prefix : str
        Key prefix of the repository inside the container; ``""`` uses its root.
    account_name : str, optional
        The storage account; else ``AZURE_STORAGE_ACCOUNT_NAME``.
    account_key, sas_token : str, optional
        Explicit credentials. They travel with the pickled storage (to Dask
        workers); leave them out to have every process read its own from the
        environment.
    endpoint_url : str, optional
        Blob service endpoint, e.g. ``"http://127.0.0.1:10000/devstoreaccount1"``
        for Azurite; defaults to ``https://<account>.blob.core.windows.net``.
    allow_http : bool
        Allow a plain ``http://`` endpoint (local emulators); also allowed when the
        process's environment has ``AZURE_ALLOW_HTTP=true``.
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
    AzureStorage
        The storage; picklable, the client is created lazily in each process.

    Raises
    ------
    InvalidInputError
        If the container name is empty or contains ``/``, credential options
        contradict each other, a plain ``http://`` endpoint is given without
        ``allow_http``, or a setting is out of range.

    Notes
    -----
    ``put_if_absent`` uses ``If-None-Match: *`` on Put Blob, which Azure Blob
    Storage honours atomically. See ``docs/storage.md`` for what is tested
    against Azurite.
    """
    if not container or "/" in container:
        raise InvalidInputError(
            f"invalid Azure container name {container!r}: give the bare container name and "
            "put the path inside it in prefix="
        )
    if sum([account_key is not None, sas_token is not None, anonymous]) > 1:
        raise InvalidInputError(
            "choose one credential source: account_key, sas_token or anonymous=True "
            "(or none of them, to use the environment)"
        )
    plain_http = endpoint_url is not None and endpoint_url.startswith("http://")
    if plain_http and not (allow_http or env_flag("AZURE_ALLOW_HTTP")):
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
    return AzureStorage(
        _AzureSettings(
            container=container,
            prefix=prefix.strip("/"),
            account_name=account_name,
            account_key=account_key,
            sas_token=sas_token,
            endpoint_url=endpoint_url,
            allow_http=allow_http,
            anonymous=anonymous,
            requests=requests,
        )
    )
