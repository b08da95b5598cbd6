"""Griffe extension: the reStructuredText markup of numpydoc docstrings, in Markdown.

The docstrings are numpydoc, written with Sphinx roles (``:class:`Session```,
``:meth:`commit```, ``:func:`~icechunk_dask.xarray.to_zarr```) and literal blocks introduced by
``::``, which mkdocstrings (Markdown) would show as they are. Here, once the package is loaded:

- each role is resolved from the docstring's scope, as Sphinx does, and becomes a Markdown
  cross-reference to the object (``[`Session`][icechunk_dask._session.Session]``), which
  mkdocs-autorefs turns into a link to the object's section of the API reference. A role that
  names nothing, or an object no page renders, is a warning: ``mkdocs build --strict`` fails;
- a paragraph's closing ``::`` becomes ``:`` (the indented block after it is already a code
  block in Markdown), and a ``::`` alone on its line goes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.sphinx_roles")

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|obj|exc):`(~?)([\w.]+)`")
_ALONE = re.compile(r"(?m)^[ \t]*::[ \t]*\n")
_CLOSING = re.compile(r"(?m)(?<=\S)::[ \t]*$")


def _find(obj: griffe.Object, target: str, loader: griffe.GriffeLoader) -> griffe.Object | None:
    """The object ``target`` names, seen from ``obj``'s scope (or as an absolute path)."""
    candidates = [target]
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)
    except griffe.NameResolutionError:
        pass
    else:
        candidates.insert(0, f"{resolved}.{rest}" if rest else resolved)
    for path in candidates:
        try:
            found = loader.modules_collection.get_member(path)
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            found = _inherited(path, loader)
        if found is not None:
            return found
    return None


def _inherited(path: str, loader: griffe.GriffeLoader) -> griffe.Object | None:
    """A method a class inherits (``Repository.garbage_collect`` from its mixin), or None."""
    owner, _, name = path.rpartition(".")
    try:
        cls = loader.modules_collection.get_member(owner)
        member = cls.all_members.get(name) if cls is not None and cls.is_class else None
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return member  # type: ignore[no-any-return]


class RstMarkup(griffe.Extension):
    """Rewrite the roles and ``::`` of every docstring once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Walk the package and rewrite each docstring in place."""
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            stack.extend(m for m in obj.members.values() if not m.is_alias)
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj, obj.docstring.value, loader)

    @staticmethod
    def _rewrite(obj: griffe.Object, text: str, loader: griffe.GriffeLoader) -> str:
        def replace(m: re.Match[str]) -> str:
            short, target = m[1] == "~", m[2]
            title = target.rsplit(".", 1)[-1] if short else target
            found = _find(obj, target, loader)
            if found is None:
                log.warning("%s: docstring names %r, which does not exist", obj.path, m[0])
                return f"`{title}`"
            path = found.target_path if found.is_alias else found.path
            return f"[`{title}`][{path}]"

        text = _ROLE.sub(replace, text)
        return _CLOSING.sub(":", _ALONE.sub("", text))
