"""RepositoryConfig: the settings a user chooses when creating a repository.

They are stored in the repository (``config.json``) and apply to every
writer, whatever process opens it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from icechunk_dask._exceptions import InvalidInputError

__all__ = ["RepositoryConfig"]


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """Settings of a repository, fixed when it is created.

    Pass one to :meth:`~icechunk_dask.Repository.create`; they are stored in the repository
    and apply to every writer. Each parameter is also a (read-only) attribute
    of the same name.

    Parameters
    ----------
    inline_chunk_threshold_bytes : int, optional
        Chunks of at most this many bytes are stored inside the manifests
        (default 64; 0 stores every chunk as its own object).
    manifest_box_refs : int, optional
        About how many chunk references one manifest box holds when an array
        has no split of its own (default 65,536): the first dimension is split
        into slabs of that many references, so a commit that appends or
        writes a region touches only the boxes it writes.
    manifest_splits : Mapping of str to Mapping of str or int to int, optional
        Explicit box extents per array: a regular expression matched against
        the whole array path -> {dimension name or index: extent in chunks}.
        The first matching expression wins; dimensions not listed are not
        split. For example ``{"era5/.*": {"time": 24}}`` puts 24 time steps
        of an ERA5 variable in each box. (Icechunk's ``ManifestSplittingConfig``.)
        Default: no explicit splits.
    manifest_max_layers : int, optional
        A box with more manifest layers than this is compacted into one by the
        commit that would exceed it (default 32).

    Raises
    ------
    InvalidInputError
        If a count is not an int (at least 0 for ``inline_chunk_threshold_bytes``,
        at least 1 for the others), or ``manifest_splits`` is not a mapping of
        valid regular expressions to ``{dimension: extent >= 1}``.

    Examples
    --------
    >>> RepositoryConfig(manifest_splits={".*": {"time": 16}})  # doctest: +SKIP
    """

    inline_chunk_threshold_bytes: int = 64
    manifest_box_refs: int = 65536
    manifest_splits: Mapping[str, Mapping[str | int, int]] = field(default_factory=dict)
    manifest_max_layers: int = 32

    def __post_init__(self) -> None:
        for name in ("inline_chunk_threshold_bytes", "manifest_box_refs", "manifest_max_layers"):
            value: object = getattr(self, name)
            low = 0 if name == "inline_chunk_threshold_bytes" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.manifest_splits, Mapping):
            raise InvalidInputError(
                "manifest_splits must map array path patterns to {dimension: extent}, got "
                f"{self.manifest_splits!r}"
            )
        for pattern, dims in self.manifest_splits.items():
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise InvalidInputError(
                    f"manifest_splits: {pattern!r} is not a regular expression ({e})"
                ) from e
            if not isinstance(dims, Mapping):
                raise InvalidInputError(
                    f"manifest_splits[{pattern!r}] must map dimensions to extents, got {dims!r}"
                )
            for dim, size in dims.items():
                key: object = dim
                extent: object = size
                if isinstance(key, bool) or not isinstance(key, str | int):
                    raise InvalidInputError(
                        f"manifest_splits[{pattern!r}]: dimensions are names or indices, got {dim!r}"
                    )
                if isinstance(extent, bool) or not isinstance(extent, int) or extent < 1:
                    raise InvalidInputError(
                        f"manifest_splits[{pattern!r}][{dim!r}] must be an int >= 1 (chunks per "
                        f"box), got {extent!r}"
                    )
