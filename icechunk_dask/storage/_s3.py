"""S3 storage on obstore (optional extra ``s3``).

obstore is imported lazily, on first use of a client, so that
``icechunk_dask.storage`` imports without it.

Create-only writes use ``If-None-Match: *`` (obstore ``mode="create"``). A
create-only PUT whose acknowledgement is lost is retried by obstore and then
trips its own precondition, which looks exactly like a lost race. So on
"already exists" :meth:`S3Storage.put_if_absent` reads the object back and
reports success when it holds exactly the bytes we wrote; callers make those
bytes unique (ref bodies carry a writer token).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from icechunk_dask._exceptions import InvalidInputError, NotFoundError, StorageError
from icechunk_dask.storage._base import Storage

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config, S3Store

__all__ = ["S3Storage", "s3_storage"]

#: Keys per DeleteObjects request (the S3 maximum).
_DELETE_BATCH = 1000
#: Longest backend message quoted in an error (obstore appends full debug dumps).
_MAX_DETAIL = 300

_exit_guard_lock = threading.Lock()
_exit_guard_registered = False


def _import_obstore() -> None:
    try:
        import obstore  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "S3 storage needs the optional dependency 'obstore'; install it with "
            "`pip install icechunk-dask[s3]` (or `pip install obstore`)"
        ) from e


def _backend_errors() -> tuple[type[Exception], ...]:
    """Return the exception types obstore raises for failed requests and bad paths."""
    from obstore.exceptions import BaseError

    return (BaseError, OSError, ValueError, RuntimeError)


def _let_runtime_threads_finish() -> None:
    # obstore completes asyncio futures from tokio threads that re-take the GIL
    # afterwards; if the interpreter is already finalizing, CPython 3.12 makes such
    # a thread pthread_exit through Rust frames and the process aborts (exit 134)
    # although every operation succeeded. Releasing the GIL briefly at exit lets
    # those threads finish first.
    time.sleep(0.02)


def _register_exit_guard() -> None:
    global _exit_guard_registered
    with _exit_guard_lock:
        if not _exit_guard_registered:
            atexit.register(_let_runtime_threads_finish)
            _exit_guard_registered = True


def _detail(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0].strip()
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return f"{type(exc).__name__}: {text}"


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


class S3Storage(Storage):
    """Objects in an S3 (or S3-compatible) bucket, through obstore.

    Create with :func:`s3_storage`. The storage pickles as its settings
    (credentials included, if given explicitly); the obstore client is rebuilt
    lazily in the process that uses it.

    Parameters
    ----------
    settings
        Validated settings, as built by :func:`s3_storage`.
    """

    def __init__(self, settings: _S3Settings) -> None:
        self._settings = settings
        self._client: S3Store | None = None
        self._client_pid = -1
        self._lock = threading.Lock()

    # -- identity ----------------------------------------------------------------

    @property
    def url(self) -> str:
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

    def __repr__(self) -> str:
        endpoint = self._settings.endpoint_url
        extra = f", endpoint_url={endpoint!r}" if endpoint else ""
        return f"S3Storage({self.url!r}{extra})"

    def _location(self) -> tuple[str, str, str | None]:
        s = self._settings
        return (s.bucket, s.prefix, s.endpoint_url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Storage) and other._location() == self._location()

    def __hash__(self) -> int:
        return hash(self._location())

    def __reduce__(self) -> tuple[Any, ...]:
        return (S3Storage, (self._settings,))

    # -- client ------------------------------------------------------------------

    def _store(self) -> S3Store:
        pid = os.getpid()
        client = self._client
        if client is not None and self._client_pid == pid:
            return client
        with self._lock:
            if self._client is None or self._client_pid != pid:
                self._client = self._build_client()
                self._client_pid = pid
            return self._client

    def _build_client(self) -> S3Store:
        _import_obstore()
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
        client_options: ClientConfig = {}
        if s.allow_http:
            client_options["allow_http"] = True
        try:
            store = S3Store(
                s.bucket,
                prefix=s.prefix or None,
                config=config,
                client_options=client_options or None,
            )
        except Exception as e:
            raise InvalidInputError(f"cannot configure S3 storage {self.url}: {_detail(e)}") from e
        _register_exit_guard()
        return store

    def check_usable(self) -> None:
        self._store()

    # -- error mapping -------------------------------------------------------------

    def _fail(self, exc: BaseException, op: str, key: str) -> NoReturn:
        detail = _detail(exc)
        if "NoSuchBucket" in str(exc):
            raise StorageError(
                f"cannot {op} {key!r} in {self.url}: the bucket {self.bucket!r} does not exist "
                f"({detail})"
            ) from exc
        if isinstance(exc, FileNotFoundError):
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None
        if isinstance(exc, ValueError):
            raise InvalidInputError(
                f"invalid storage key {key!r} for {self.url}: {detail}"
            ) from exc
        raise StorageError(f"cannot {op} {key!r} in {self.url}: {detail}") from exc

    # -- the async protocol --------------------------------------------------------

    async def get(self, key: str) -> bytes:
        store = self._store()
        import obstore as obs

        try:
            result = await obs.get_async(store, key)
            data = await result.bytes_async()
        except _backend_errors() as e:
            self._fail(e, "read", key)
        return bytes(data)

    async def _size(self, key: str) -> int:
        store = self._store()
        import obstore as obs

        try:
            meta = await obs.head_async(store, key)
        except _backend_errors() as e:
            self._fail(e, "read", key)
        return int(meta["size"])

    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        if start < 0 or (length is not None and length < 0):
            raise InvalidInputError(
                f"invalid byte range start={start}, length={length} for {key!r}: "
                "start and length must not be negative"
            )
        if length == 0:
            await self._size(key)  # NotFoundError if missing
            return b""
        if start == 0 and length is None:
            return await self.get(key)
        store = self._store()
        import obstore as obs

        try:
            if length is None:
                result = await obs.get_async(store, key, options={"range": {"offset": start}})
                data = await result.bytes_async()
            else:
                data = await obs.get_range_async(store, key, start=start, length=length)
        except FileNotFoundError as e:
            self._fail(e, "read", key)
        except _backend_errors() as e:
            # S3 answers 416 for a range that starts at or past the end; the
            # contract (like slicing) returns no bytes there.
            if start >= await self._size(key):
                return b""
            self._fail(e, "read", key)
        return bytes(data)

    async def put(self, key: str, data: bytes) -> None:
        store = self._store()
        import obstore as obs

        try:
            await obs.put_async(store, key, data)
        except _backend_errors() as e:
            self._fail(e, "write", key)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        store = self._store()
        import obstore as obs
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            await obs.put_async(store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            pass
        except _backend_errors() as e:
            self._fail(e, "create", key)
        else:
            return True
        # Lost race, or our own write whose acknowledgement was lost: read back.
        try:
            stored = await self.get(key)
        except NotFoundError:
            return False
        return stored == bytes(data)

    async def list(self, prefix: str) -> list[str]:
        store = self._store()
        import obstore as obs

        # obstore lists whole path segments: list the enclosing "directory" and
        # filter, so that prefixes ending mid-name ("refs/branch.") work.
        head, _, _ = prefix.rpartition("/")
        out: list[str] = []
        try:
            async for chunk in obs.list(store, head or None, chunk_size=1000):
                out.extend(meta["path"] for meta in chunk if meta["path"].startswith(prefix))
        except _backend_errors() as e:
            self._fail(e, "list", prefix)
        return out

    async def delete(self, keys: Iterable[str]) -> None:
        store = self._store()
        import obstore as obs

        batch = list(dict.fromkeys(keys))

        async def delete_batch(part: list[str]) -> None:
            try:
                await obs.delete_async(store, part)
            except FileNotFoundError:
                pass
            except _backend_errors() as e:
                self._fail(e, "delete", part[0] if len(part) == 1 else f"{part[0]}, ...")

        await asyncio.gather(
            *(
                delete_batch(batch[i : i + _DELETE_BATCH])
                for i in range(0, len(batch), _DELETE_BATCH)
            )
        )

    async def exists(self, key: str) -> bool:
        try:
            await self._size(key)
        except NotFoundError:
            return False
        return True


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
    bucket
        The bucket name.
    prefix
        Key prefix of the repository inside the bucket (leading and trailing
        ``/`` are ignored); ``""`` uses the bucket root.
    region
        The bucket's region; taken from the environment (or ``us-east-1``) if
        omitted.
    endpoint_url
        URL of an S3-compatible server, e.g. ``"http://127.0.0.1:9000"``.
    allow_http
        Allow plain ``http://`` endpoints (local test servers).
    access_key_id, secret_access_key, session_token
        Explicit credentials. They travel with the pickled storage (to Dask
        workers); use the environment instead if that is not wanted.
    anonymous
        Send unsigned requests.
    from_env
        Take credentials from the environment (the default when no keys are
        given).

    Returns
    -------
    S3Storage
        The storage; picklable, the client is created lazily in each process.

    Raises
    ------
    InvalidInputError
        If the bucket name is empty or the credential options contradict each
        other.

    Notes
    -----
    ``put_if_absent`` relies on the server honouring ``If-None-Match: *`` on
    PUT (AWS S3 since 2024, MinIO, moto, SeaweedFS, ...). A server that ignores
    the header silently breaks the exactly-one-winner guarantee.

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
    if endpoint_url is not None and endpoint_url.startswith("http://") and not allow_http:
        raise InvalidInputError(
            f"the endpoint {endpoint_url!r} uses plain http; pass allow_http=True to allow it"
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
    )
    return S3Storage(settings)
