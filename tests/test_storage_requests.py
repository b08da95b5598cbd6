"""Request settings of the object-store backends: validation, the client they build,
the cross-loop concurrency limiter and the retry budget (no server needed)."""

from __future__ import annotations

import asyncio
import pickle
import threading
from datetime import timedelta

import pytest

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage import s3_storage
from icechunk_dask.storage._requests import Limiter, RequestSettings, Retrying, is_transient


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_retries", -1),
        ("retry_timeout", 0),
        ("initial_backoff", -0.1),
        ("max_backoff", 0.01),  # below the initial backoff
        ("connect_timeout", 0),
        ("request_timeout", float("nan")),
        ("max_concurrent_requests", 0),
    ],
)
def test_bad_settings_are_refused(option: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=option):
        s3_storage(bucket="b", anonymous=True, **{option: value})  # type: ignore[arg-type]


def test_settings_reach_the_client_and_survive_pickling() -> None:
    storage = s3_storage(
        bucket="b",
        anonymous=True,
        max_retries=4,
        retry_timeout=30,
        initial_backoff=0.5,
        max_backoff=8,
        connect_timeout=2,
        request_timeout=7,
        max_concurrent_requests=5,
    )
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.requests == storage.requests
    client = clone._store()
    assert client.retry_config["max_retries"] == 4
    assert client.retry_config["retry_timeout"] == timedelta(seconds=30)
    assert client.retry_config["backoff"]["init_backoff"] == timedelta(seconds=0.5)
    assert client.retry_config["backoff"]["max_backoff"] == timedelta(seconds=8)
    assert client.client_options["timeout"] in ("7s", timedelta(seconds=7))
    assert client.client_options["connect_timeout"] in ("2s", timedelta(seconds=2))


def test_defaults_are_documented_values() -> None:
    assert RequestSettings() == RequestSettings(
        max_retries=10,
        retry_timeout=120.0,
        initial_backoff=0.1,
        max_backoff=15.0,
        backoff_base=2.0,
        connect_timeout=5.0,
        request_timeout=60.0,
        max_concurrent_requests=64,
    )


def test_limiter_holds_across_threads_and_event_loops() -> None:
    limiter = Limiter(3)
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    async def one() -> None:
        async with limiter:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.002)
            with lock:
                state["now"] -= 1

    def loop_in_thread() -> None:
        async def many() -> None:
            await asyncio.gather(*(one() for _ in range(40)))

        asyncio.run(many())

    threads = [threading.Thread(target=loop_in_thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert state == {"now": 0, "max": 3}


async def test_limiter_cancelled_waiters_give_their_turn_on() -> None:
    limiter = Limiter(1)
    await limiter.__aenter__()
    waiters = [asyncio.ensure_future(limiter.__aenter__()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # cancelled while queued
    await limiter.__aexit__()  # hands the slot to waiters[1] (0 is gone)
    waiters[1].cancel()  # cancelled after the hand-over: must pass the slot on
    await asyncio.wait_for(waiters[2], timeout=10)
    assert waiters[0].cancelled() and waiters[1].cancelled()
    await limiter.__aexit__()
    await asyncio.wait_for(limiter.__aenter__(), timeout=10)  # and the slot is free again


async def test_retry_budget_counts_attempts() -> None:
    retry = Retrying(RequestSettings(max_retries=2, initial_backoff=0.001, max_backoff=0.002))
    assert await retry.next_attempt()
    assert await retry.next_attempt()
    assert not await retry.next_attempt()
    assert retry.attempts == 3


def test_only_transient_errors_are_retried() -> None:
    from obstore.exceptions import GenericError, PermissionDeniedError

    assert is_transient(GenericError("HTTP error: error sending request"))
    assert is_transient(GenericError("HTTP error: request or response body error"))
    assert not is_transient(GenericError("Wanted range starting at 100, but object was 100"))
    assert not is_transient(GenericError("Error performing PUT x - HTTP error: builder error"))
    assert is_transient(GenericError("Server returned non-2xx status code: 503 Service"))
    assert is_transient(GenericError("Server returned non-2xx status code: 429 Too Many"))
    assert not is_transient(GenericError("Server returned non-2xx status code: 400 Bad"))
    assert not is_transient(
        GenericError("Error performing PUT x in 1s, after 3 retries, max_retries: 3 - boom")
    )
    assert is_transient(GenericError("HTTP error; RetryError { retries: 0, max_retries: 3 }"))
    assert not is_transient(GenericError("HTTP error; RetryError { retries: 3, max_retries: 3 }"))
    # obstore stopped short of its budget (it does not retry an error answer's body that
    # timed out): the failure of the exchange is still transient
    assert is_transient(
        GenericError(
            "Error performing GET x in 2.4s, after 5 retries, max_retries: 10, retry_timeout: "
            "120s - HTTP error: request or response body error"
        )
    )
    assert not is_transient(
        GenericError("Error performing GET x in 2s, after 2 retries, max_retries: 10 - denied")
    )
    assert not is_transient(PermissionDeniedError("denied"))
    assert not is_transient(FileNotFoundError("missing"))
