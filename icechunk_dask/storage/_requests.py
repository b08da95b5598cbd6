"""Request settings shared by the object-store backends: retries, timeouts, concurrency.

Two layers retry a failed request:

1. obstore (the Rust ``object_store`` client) retries each HTTP request that
   failed with a 5xx status, a 429, a connection error or (for safe requests) a
   timeout, with exponential backoff and jitter, up to ``max_retries`` times
   within ``retry_timeout``;
2. :class:`Retrying` (used by the storage classes) retries the failures that
   obstore cannot retry on its own: a create-only PUT whose outcome is unknown
   (the storage reads the key back first) and a response body that broke off or
   stalled while a listing streamed. It uses the same budget, counted from the
   first attempt, and never retries a failure that obstore already retried.

:class:`Limiter` caps the requests in flight per process, across threads and
event loops.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from icechunk_dask._exceptions import InvalidInputError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["Limiter", "RequestSettings", "Retrying"]

#: HTTP statuses worth retrying besides 5xx: request timeout, too many requests.
_RETRYABLE_4XX = frozenset({408, 429})
_STATUS = re.compile(r"status code: (\d{3})")
#: How obstore describes a failure of the HTTP exchange itself (reqwest errors).
_TRANSPORT = ("HTTP error", "HttpError", "timed out")
#: ... but not a request that could not even be built (bad URL, http without allow_http).
_NOT_TRANSPORT = ("builder error",)
#: How many retries obstore made of its budget, in its message or in its debug form.
_RETRIES = re.compile(
    r"after (\d+) retries, max_retries: (\d+)|\bretries: (\d+),\s*max_retries: (\d+)"
)


@dataclass(frozen=True)
class RequestSettings:
    """How an object-store backend retries, times out and limits its requests.

    The storage constructors (:func:`~icechunk_dask.storage.s3_storage`, ...)
    build one from their keyword arguments; a storage's ``requests`` property
    returns it. Each parameter is also a (read-only) attribute of the same name.

    Parameters
    ----------
    max_retries : int, optional
        Retries of one failed request (not counting the first attempt);
        default 10.
    retry_timeout : float, optional
        Seconds after the first attempt when no further retry starts; default 120.
    initial_backoff : float, optional
        Seconds before the first retry (default 0.1); later waits grow by
        ``backoff_base`` up to ``max_backoff``, each drawn at random (jitter)
        so that many clients that failed together do not retry together.
    max_backoff : float, optional
        Longest wait between two attempts, in seconds; default 15.
    backoff_base : float, optional
        Growth factor of the waits (at least 1); default 2.
    connect_timeout : float, optional
        Seconds to establish a connection; default 5.
    request_timeout : float, optional
        Seconds for a whole request, from connecting until the response body is
        read; a stalled transfer fails after this long and is retried. Default 60.
    max_concurrent_requests : int, optional
        Operations in flight at once per process (across threads and event
        loops); further ones wait for a free slot. Default 64.

    Raises
    ------
    InvalidInputError
        If a count is negative (``max_retries``) or below 1
        (``max_concurrent_requests``), a duration is not positive,
        ``backoff_base`` is below 1, or ``max_backoff`` is below
        ``initial_backoff``.
    """

    max_retries: int = 10
    retry_timeout: float = 120.0
    initial_backoff: float = 0.1
    max_backoff: float = 15.0
    backoff_base: float = 2.0
    connect_timeout: float = 5.0
    request_timeout: float = 60.0
    max_concurrent_requests: int = 64

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InvalidInputError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_concurrent_requests < 1:
            raise InvalidInputError(
                f"max_concurrent_requests must be >= 1, got {self.max_concurrent_requests}"
            )
        if self.backoff_base < 1:
            raise InvalidInputError(f"backoff_base must be >= 1, got {self.backoff_base}")
        for name in (
            "retry_timeout",
            "initial_backoff",
            "max_backoff",
            "connect_timeout",
            "request_timeout",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value}")
        if self.max_backoff < self.initial_backoff:
            raise InvalidInputError(
                f"max_backoff ({self.max_backoff}) must not be below initial_backoff "
                f"({self.initial_backoff})"
            )

    def _client_options(self) -> ClientConfig:
        """The HTTP client options (timeouts) for obstore."""
        return {
            "connect_timeout": timedelta(seconds=self.connect_timeout),
            "timeout": timedelta(seconds=self.request_timeout),
        }

    def _retry_config(self) -> RetryConfig:
        """The retry configuration for obstore (the same budget as :class:`Retrying`)."""
        return {
            "max_retries": self.max_retries,
            "retry_timeout": timedelta(seconds=self.retry_timeout),
            "backoff": {
                "init_backoff": timedelta(seconds=self.initial_backoff),
                "max_backoff": timedelta(seconds=self.max_backoff),
                "base": self.backoff_base,
            },
        }


def is_transient(exc: BaseException) -> bool:
    """Whether a failed obstore call may succeed if repeated.

    A failure of the HTTP exchange itself (connection refused or lost, body
    broke off, timed out) or an answer with a 5xx/408/429 status is transient,
    unless obstore already spent its retries on it. Not-found, precondition,
    permission, range and configuration errors are not.
    """
    from obstore.exceptions import GenericError

    if not isinstance(exc, GenericError):
        return False
    text = str(exc)
    if _spent(text):
        return False
    status = _STATUS.search(text)
    if status is None:
        return any(m in text for m in _TRANSPORT) and not any(m in text for m in _NOT_TRANSPORT)
    code = int(status.group(1))
    return code >= 500 or code in _RETRYABLE_4XX


def _spent(text: str) -> bool:
    """Whether obstore gave up because its own retries were all used.

    It also stops short of them on a failure it does not retry itself, such as
    the body of an error answer (a 404's) timing out after earlier attempts
    met 5xx answers or resets; that failure is still worth another attempt.
    """
    found = _RETRIES.search(text)
    if found is None:
        return False
    made, budget = (int(g) for g in found.groups() if g is not None)
    return made >= budget


class Retrying:
    """The retry budget of one operation: attempts, deadline and jittered backoff.

    Parameters
    ----------
    settings
        The storage's request settings.
    """

    def __init__(self, settings: RequestSettings) -> None:
        self._settings = settings
        self._start = time.monotonic()
        self._wait = settings.initial_backoff
        self.attempts = 1

    @property
    def elapsed(self) -> float:
        """Seconds since the first attempt."""
        return time.monotonic() - self._start

    async def next_attempt(self) -> bool:
        """Wait before another attempt and return True, or False if the budget is spent."""
        s = self._settings
        if self.attempts > s.max_retries or self.elapsed >= s.retry_timeout:
            return False
        # "Equal jitter": half fixed, half random, so waits grow but never line up.
        delay = self._wait * random.uniform(0.5, 1.0)
        self._wait = min(s.max_backoff, self._wait * s.backoff_base)
        await asyncio.sleep(min(delay, max(0.0, s.retry_timeout - self.elapsed)))
        self.attempts += 1
        return True


class Limiter:
    """A counting semaphore for coroutines on any event loop in any thread.

    ``asyncio.Semaphore`` belongs to one event loop; a storage is shared by
    zarr's I/O loop, ``asyncio.run`` in worker threads and so on.

    Parameters
    ----------
    limit
        How many holders at once.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def __aenter__(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
                    raise
            # The slot was handed over just as we were cancelled: pass it on.
            self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                if loop.is_closed():
                    continue
                # The slot goes straight to the waiter (the count stays taken).
                loop.call_soon_threadsafe(_wake, future)
                return
            self._free += 1


def _wake(future: asyncio.Future[None]) -> None:
    # A future cancelled meanwhile is done: its waiter's cancellation handler passes
    # the slot on.
    if not future.done():
        future.set_result(None)
