"""``to_zarr`` for xarray objects: xarray's own writer for metadata, Dask tasks for data.

Metadata, attributes, appends (resizes) and in-memory variables go through
xarray's ``ZarrStore`` and ``dump_to_store``, exactly as ``Dataset.to_zarr``
does, but into a *stage* fork of the session; dask-backed variables are then
written by :mod:`icechunk_dask.dask` tasks that fork the stage. The stage's and
the tasks' change records are merged in the graph, so the session changes only
when everything succeeded (``compute=True``), or when you merge the computed
record (``compute=False``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

import dask
import xarray as xr
import zarr
from dask.base import is_dask_collection

from icechunk_dask._compat.xarray import (
    DATAARRAY_NAME,
    DATAARRAY_VARIABLE,
    ArrayWriter,
    ZarrStore,
    choose_default_mode,
    dump_to_store,
    validate_dataset_names,
)
from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask._session import Session
from icechunk_dask.dask import check_writable_session, launch, prepare_write

if TYPE_CHECKING:
    from dask.delayed import Delayed

__all__ = ["IcechunkDaskAccessor", "to_icechunk", "to_zarr"]

ZarrWriteModes = Literal["w", "w-", "a", "a-", "r+"]
Region = Mapping[str, slice | Literal["auto"]] | Literal["auto"] | None

_TO_ZARR_FIXES = (
    (
        "pass align_chunks=True (or safe_chunks=False) to write the blocks that share a chunk "
        "from one task (icechunk_dask never lets two tasks write one chunk);"
    ),
    "or change encoding['chunks'] (and encoding['shards']) of the variable.",
)


class _DeferringWriter(ArrayWriter):
    """xarray's ``ArrayWriter`` that keeps in-memory writes for later instead of writing now."""

    __slots__ = ("eager",)

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.eager: list[tuple[Any, zarr.Array[Any], Any]] = []

    def add(self, source: Any, target: zarr.Array[Any], region: Any = None) -> None:
        if is_dask_collection(source):
            self.sources.append(source)
            self.targets.append(target)
            self.regions.append(region)
        else:
            self.eager.append((source, target, region))

    def write_eager(self) -> None:
        for source, target, region in self.eager:
            target[region or ...] = source
        self.eager = []


@overload
def to_zarr(
    obj: xr.Dataset | xr.DataArray,
    session: Session,
    *,
    group: str | None = ...,
    mode: ZarrWriteModes | None = ...,
    region: Region = ...,
    append_dim: Hashable | None = ...,
    encoding: Mapping[Any, Any] | None = ...,
    safe_chunks: bool = ...,
    align_chunks: bool = ...,
    split_every: int | None = ...,
    progress: bool = ...,
    resume: str | None = ...,
    compute: Literal[True] = ...,
) -> None: ...


@overload
def to_zarr(
    obj: xr.Dataset | xr.DataArray,
    session: Session,
    *,
    group: str | None = ...,
    mode: ZarrWriteModes | None = ...,
    region: Region = ...,
    append_dim: Hashable | None = ...,
    encoding: Mapping[Any, Any] | None = ...,
    safe_chunks: bool = ...,
    align_chunks: bool = ...,
    split_every: int | None = ...,
    progress: bool = ...,
    resume: str | None = ...,
    compute: Literal[False],
) -> Delayed: ...


def to_zarr(
    obj: xr.Dataset | xr.DataArray,
    session: Session,
    *,
    group: str | None = None,
    mode: ZarrWriteModes | None = None,
    region: Region = None,
    append_dim: Hashable | None = None,
    encoding: Mapping[Any, Any] | None = None,
    safe_chunks: bool = True,
    align_chunks: bool = False,
    split_every: int | None = None,
    progress: bool = False,
    resume: str | None = None,
    compute: bool = True,
) -> Delayed | None:
    """Write an xarray Dataset or DataArray into a session, dask variables in parallel.

    Follows ``xarray.Dataset.to_zarr``: the same modes, ``region`` (including
    ``"auto"``), ``append_dim`` and ``encoding``, written with xarray's own
    writer (Zarr v3, no consolidated metadata). Dask-backed variables are
    written by one task per box of blocks on the current Dask scheduler
    (threads, processes or a ``distributed.Client``); each task returns a
    compact change record, the records are merged in the graph, and the
    session receives all changes at once. Nothing is visible in the
    repository until ``session.commit(...)``.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The Dataset or DataArray to write.
    session : Session
        A writable session.
    group : str or None, optional
        Group path inside the repository (``None``, the default: the root group).
    mode : {"w", "w-", "a", "a-", "r+", None}, optional
        As in xarray: "w" overwrite, "w-" create (fail if it exists), "a"
        override or append, "a-" append only variables with ``append_dim``,
        "r+" modify values of existing arrays only. Default (``None``): "a"
        with ``append_dim``, "r+" with ``region``, else "w-".
    region : dict of str to (slice or "auto"), "auto" or None, optional
        A mapping from dimension names to slices or ``"auto"``, or
        ``"auto"``: write into that region of existing arrays (``"auto"``
        infers it from the index coordinates, as in xarray). Default ``None``:
        whole arrays.
    append_dim : Hashable or None, optional
        Append along this dimension (the arrays are resized). Default ``None``.
    encoding : Mapping or None, optional
        Per-variable encodings, e.g. ``{"t": {"chunks": (1, 100, 100)}}``.
    safe_chunks : bool, optional
        Refuse dask chunks that would share a Zarr chunk (or shard) between
        tasks, with xarray's checks and message (default ``True``). With
        ``False``, such blocks are written by one task instead (never by two).
    align_chunks : bool, optional
        Write blocks that share a Zarr chunk (or shard) from one task,
        without rechunking; implies ``safe_chunks=False``. Default ``False``.
    split_every : int or None, optional
        Fan-in of the tree reduction that merges the tasks' change records
        (``None``: 16; at least 2).
    progress : bool, optional
        Show a progress bar while computing (dask's for local schedulers,
        distributed's for a cluster). Only with ``compute=True``; default ``False``.
    resume : str or None, optional
        A name for this write job: every task stores its change record in the
        repository, and after a crash or a failed run the same call with the
        same name recomputes only the tasks without one (see
        :func:`~icechunk_dask.store_sessions`). Default ``None``.
    compute : bool, optional
        Write now and merge into ``session`` (``True``, the default), or return
        a lazy collection (``False``).

    Returns
    -------
    None
        With ``compute=True``: every change (metadata, in-memory and dask
        variables) is merged into ``session``; commit it to publish them.
    dask.delayed.Delayed
        With ``compute=False``: nothing has changed in ``session`` yet;
        computing it (``dask.compute``, ``.compute()``, ``persist``, a
        distributed future) stores one :class:`~icechunk_dask.ChangeSet`
        holding all changes (metadata included) in the repository, and
        ``session.commit()`` merges it: ``dask.compute(lazy);
        session.commit()`` commits everything. If it is never computed,
        commit raises ``UnmergedWritesError`` naming this write.

    Raises
    ------
    ValueError
        For xarray's own argument, mode and safe-chunks errors;
        ``session`` is then unchanged.
    InvalidInputError
        For icechunk_dask's checks (a ``ValueError`` too): blocks that would
        share a chunk between tasks, regions that do not fit, an invalid
        ``split_every`` or ``resume``; ``session`` is then unchanged.
    ReadOnlyError
        If ``session`` is read-only or committed.
    TypeError
        If ``obj`` is not a Dataset or DataArray, or ``session`` not a
        :class:`~icechunk_dask.Session`.
    StorageError
        If the data cannot be stored (with ``compute=True``; ``session`` is
        then unchanged).

    Examples
    --------
    >>> with distributed.Client():  # doctest: +SKIP
    ...     to_zarr(ds.chunk(time=1), session, mode="w")
    >>> session.commit("ingest")  # doctest: +SKIP
    """
    check_writable_session(session, "to_zarr")
    ds = _to_dataset(obj)
    validate_dataset_names(ds)
    for v in ds.variables.values():
        if v.size == 0:  # xarray does the same (zero-length dimensions, xarray#5741)
            v.load()
    enc = dict(encoding or {})
    concrete_mode = choose_default_mode(mode=mode, append_dim=append_dim, region=region)
    stage = session._fork()
    zstore = ZarrStore.open_group(
        stage.store,
        group=group,
        mode=concrete_mode,
        zarr_format=3,
        consolidated=False,
        consolidate_on_close=False,
        append_dim=append_dim,
        write_region=region,
        safe_chunks=safe_chunks and not align_chunks,
        align_chunks=False,
    )
    ds = zstore._validate_and_autodetect_region(ds)
    zstore._validate_encoding(enc)
    writer = _DeferringWriter()
    dump_to_store(ds, zstore, writer, encoding=enc)  # type: ignore[no-untyped-call]
    prepared = prepare_write(
        list(writer.sources),
        list(writer.targets),
        stage,
        regions=[tuple(r) if r else None for r in writer.regions],
        split_every=split_every,
        group_shared=align_chunks or not safe_chunks,
        fixes=_TO_ZARR_FIXES,
    )
    writer.write_eager()
    where = f"group {group!r}" if group else "the root group"
    return launch(
        prepared,
        stage,
        session,
        what=f"to_zarr into {where}",
        resume=resume,
        compute=compute,
        progress=progress,
    )


def to_icechunk(
    obj: xr.Dataset | xr.DataArray,
    session: Session,
    *,
    group: str | None = None,
    mode: ZarrWriteModes | None = None,
    safe_chunks: bool = True,
    align_chunks: bool = False,
    append_dim: Hashable | None = None,
    region: Region = None,
    encoding: Mapping[Any, Any] | None = None,
    chunkmanager_store_kwargs: Mapping[str, Any] | None = None,
    split_every: int | None = None,
) -> None:
    """Icechunk's ``icechunk.xarray.to_icechunk``, for code migrating unchanged.

    The same as :func:`to_zarr` with ``compute=True``.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        What to write.
    session : Session
        A writable session (it receives every change; commit it afterwards).
    group : str or None, optional
        As in :func:`to_zarr`.
    mode : {"w", "w-", "a", "a-", "r+", None}, optional
        As in :func:`to_zarr`.
    safe_chunks : bool, optional
        As in :func:`to_zarr` (default ``True``).
    align_chunks : bool, optional
        As in :func:`to_zarr` (default ``False``).
    append_dim : Hashable or None, optional
        As in :func:`to_zarr`.
    region : dict of str to (slice or "auto"), "auto" or None, optional
        As in :func:`to_zarr`.
    encoding : Mapping or None, optional
        As in :func:`to_zarr`.
    chunkmanager_store_kwargs : Mapping of str to Any or None, optional
        Only ``scheduler=`` is accepted (the Dask scheduler to compute with).
    split_every : int or None, optional
        As in :func:`to_zarr` (not in Icechunk's signature).

    Raises
    ------
    InvalidInputError
        For another ``chunkmanager_store_kwargs`` key; otherwise as :func:`to_zarr`.

    Examples
    --------
    >>> session = repo.writable_session("main")  # doctest: +SKIP
    >>> to_icechunk(ds, session, mode="w")  # doctest: +SKIP
    >>> session.commit("ingest")  # doctest: +SKIP
    """
    kwargs = dict(chunkmanager_store_kwargs or {})
    unsupported = sorted(set(kwargs) - {"scheduler"})
    if unsupported:
        raise InvalidInputError(
            f"to_icechunk does not take chunkmanager_store_kwargs {unsupported}"
        )
    with dask.config.set(kwargs):
        to_zarr(
            obj,
            session,
            group=group,
            mode=mode,
            safe_chunks=safe_chunks,
            align_chunks=align_chunks,
            append_dim=append_dim,
            region=region,
            encoding=encoding,
            split_every=split_every,
        )


def _to_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """The Dataset that ``DataArray.to_zarr`` would write (same naming rules)."""
    if isinstance(obj, xr.Dataset):
        return obj
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"to_zarr writes xarray Datasets and DataArrays, got {type(obj).__name__}")
    if obj.name is None:
        return obj.to_dataset(name=DATAARRAY_VARIABLE)
    if obj.name in obj.coords or obj.name in obj.dims:
        ds = obj.to_dataset(name=DATAARRAY_VARIABLE)
        ds.attrs[DATAARRAY_NAME] = obj.name
        return ds
    return obj.to_dataset()


class IcechunkDaskAccessor:
    """``ds.icechunk_dask.to_zarr(session, ...)``: :func:`to_zarr` as a method.

    Registered on ``xr.Dataset`` and ``xr.DataArray`` as ``icechunk_dask``.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The object the accessor belongs to (xarray passes it).

    Examples
    --------
    >>> import icechunk_dask.xarray  # registers the accessor  # doctest: +SKIP
    >>> ds.icechunk_dask.to_zarr(session, mode="w")  # doctest: +SKIP
    """

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def to_zarr(self, session: Session, **kwargs: Any) -> Delayed | None:
        """Write into ``session``; see :func:`icechunk_dask.to_zarr` for the arguments.

        Parameters
        ----------
        session : Session
            A writable session.
        **kwargs : Any
            Keyword arguments of :func:`icechunk_dask.to_zarr`.

        Returns
        -------
        None or dask.delayed.Delayed
            As :func:`icechunk_dask.to_zarr`.
        """
        return to_zarr(self._obj, session, **kwargs)  # type: ignore[no-any-return]


xr.register_dataset_accessor("icechunk_dask")(IcechunkDaskAccessor)  # type: ignore[no-untyped-call]
xr.register_dataarray_accessor("icechunk_dask")(IcechunkDaskAccessor)  # type: ignore[no-untyped-call]
