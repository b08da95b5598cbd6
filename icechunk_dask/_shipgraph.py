"""Task arguments that keep only their compressed serialised form once they are sent.

A write job's optimised graph gives each write task the source tasks only it
needs and the keys of its blocks (``_writegraph``). With distributed, the
scheduler holds those as Python objects (~0.5-2 KiB per source block) and its
log of recent messages to the workers (``BatchedSend.recent_message_log``, the
last ``distributed.admin.low-level-log-length`` batches per worker) kept every
message it sent, with them: a long-lived scheduler grew by 50-200 MiB per
100,000-block job, job after job.

:class:`Shipped` wraps such an argument. Where nothing is pickled (dask's
threaded scheduler) it is a plain holder. The first time it is pickled (the
scheduler sending the task to a worker) it pickles and compresses its value
once, keeps only those bytes and drops the objects; every later pickle (a
task sent again after a worker was lost) reuses the bytes. Task specs and keys
repeat their names and functions, so the bytes are small (100,000 source tasks:
~4.6 MB pickled, ~0.3 MB compressed), and what the log keeps after the job is a
few bytes per block. The work stays where it was (the scheduler pickled these
tasks when it sent them before too), so a job starts as early as it did.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
from numcodecs import Zstd

_CODEC = Zstd(level=1)


class Shipped[T]:
    """A task argument that, once pickled, keeps only its compressed pickled bytes.

    Parameters
    ----------
    value : T
        The argument (a subgraph, a tuple of keys). Pickled as distributed
        pickles: with ``pickle``, by value with ``cloudpickle`` when that
        fails or refers to ``__main__`` (functions the client defined
        interactively exist on the workers only by value).
    """

    __slots__ = ("_blob", "_value")

    def __init__(self, value: T) -> None:
        self._value: T | None = value
        self._blob: bytes | None = None  # set once: from then on only the bytes count

    def get(self) -> T:
        """The value (unpickled from the bytes if only they are kept)."""
        value = self._value  # read before the bytes: it is dropped only after they are set
        blob = self._blob
        if blob is None:
            return value  # type: ignore[return-value]  # not dropped yet when it was read
        unpacked: T = pickle.loads(_CODEC.decode(blob))
        return unpacked

    @property
    def packed(self) -> bool:
        """Whether only the compressed bytes are kept."""
        return self._blob is not None

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # the value first: another thread may pack meanwhile, and it drops the value only
        # after it has set the bytes (read in this order, a dropped value is never packed)
        value = self._value
        blob = self._blob
        if blob is None:
            # a thread racing here packs the same value to equal bytes; either is kept
            blob = self._blob = bytes(_CODEC.encode(_dumps(value)))
            self._value = None
        # a module-level function: cloudpickle would copy a classmethod by value
        return (_unpack, (blob,))


def _unpack(blob: bytes) -> Shipped[Any]:
    shipped: Shipped[Any] = Shipped(None)
    shipped._blob = blob
    return shipped


def _dumps(value: Any) -> bytes:
    try:
        blob = pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - any pickling failure: try by value
        return _by_value(value)
    # pickle names functions by module; the workers have no __main__ of the client's
    return _by_value(value) if b"__main__" in blob else blob


def _by_value(value: Any) -> bytes:
    blob: bytes = cloudpickle.dumps(value, protocol=5)
    return blob
