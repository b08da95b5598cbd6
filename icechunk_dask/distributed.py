"""Merge sessions that came back from any executor (the seed document's API).

Any task framework (``concurrent.futures``, Dask, joblib, Ray, ...) can send a
session to its workers inside ``session.allow_pickling()`` (or send
``session.fork()``); each task returns its copy, and :func:`merge_sessions`
brings the copies' changes back into the coordinating session before commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._session import Session

__all__ = ["merge_sessions"]


def merge_sessions(
    session: Session | Iterable[Session | ChangeSet],
    *sessions: Session | ChangeSet | Iterable[Session | ChangeSet],
) -> Session:
    """Merge returned sessions or change records into ``session``, in place.

    Icechunk's form, ``merge_sessions(*forks)`` (forks or lists of forks, no
    coordinating session), also works: the forks are merged into the first one,
    which is returned; merge it into its parent with ``session.merge(fork)``.

    All or nothing: if any item cannot be merged, ``session`` is unchanged.

    Parameters
    ----------
    session : Session
        The coordinating session (the one that will commit).
    *sessions : Session, ChangeSet, or list or tuple of them
        Sessions returned by tasks (pickled copies made under
        ``session.allow_pickling()``, or forks), change records
        (``fork.changes()``), or lists or tuples of them (nested ones are
        flattened; other iterables are refused).

    Returns
    -------
    Session
        ``session`` itself, now holding every merged change.

    Raises
    ------
    TypeError
        If ``session`` is not a :class:`~icechunk_dask.Session` or an item is
        neither a session nor a change record.
    InvalidInputError
        If a record belongs to another repository or another base snapshot.
    ReadOnlyError
        If ``session`` is read-only or committed.
    ConflictError
        If two records wrote different bytes to one chunk or conflicting
        metadata; ``session`` is then unchanged.

    Examples
    --------
    >>> with session.allow_pickling():  # doctest: +SKIP
    ...     copies = list(pool.map(write_region, [session] * n, range(n)))
    >>> session = merge_sessions(session, *copies)  # doctest: +SKIP
    >>> session.commit("finished writes")  # doctest: +SKIP
    """
    if isinstance(session, Session) and not session.is_fork:
        session.merge(*_flatten(sessions))
        return session
    items = list(_flatten([session, *sessions]))
    if not items or not isinstance(items[0], Session):
        raise TypeError(
            "merge_sessions(session, *sessions) merges into its first argument, the "
            "coordinating icechunk_dask.Session (or, Icechunk's way, into the first of the "
            f"forks given); got {type(session).__name__}"
        )
    target = items[0]
    target.merge(*items[1:])
    return target


def _flatten(items: Iterable[object]) -> Iterator[Session | ChangeSet]:
    for item in items:
        if isinstance(item, Session | ChangeSet):
            yield item
        elif isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            raise TypeError(
                "merge_sessions accepts icechunk_dask Sessions (returned by tasks), change "
                "records (session.changes()) and lists of them; got "
                f"{type(item).__name__}: {item!r:.80}"
            )
