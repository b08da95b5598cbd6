"""MkDocs hook: every public name has a place in the API reference (``docs/api/``).

For each module of ``PUBLIC_MODULES``, every name in its ``__all__`` (read from the source,
without importing it) must be

- rendered by a ``::: module.name`` directive, or by a ``::: module`` directive for the
  whole module (mkdocstrings then renders the names of its ``__all__``; not with
  ``members: false``), or
- cross-referenced as ``[text][other.module.name]``: a re-export documented on the page of
  the public module that defines it (the reference must resolve, or the strict build fails).

Each name missing is a warning, so ``mkdocs build --strict`` fails until a page documents it.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.api_coverage")

PUBLIC_MODULES = (
    "icechunk_dask",
    "icechunk_dask.dask",
    "icechunk_dask.distributed",
    "icechunk_dask.storage",
    "icechunk_dask.testing",
    "icechunk_dask.xarray",
)

# A directive and its indented YAML options.
_DIRECTIVE = re.compile(r"^:::[ \t]+([\w.]+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.MULTILINE)
_NO_MEMBERS = re.compile(r"^[ \t]+members:[ \t]*(false|\[\])[ \t]*$", re.MULTILINE)
_REFERENCE = re.compile(r"\]\[([\w.]+)\]")


def _source(root: Path, module: str) -> Path:
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _exports(path: Path) -> list[str]:
    """The literal ``__all__`` of a module's source (empty if it has none)."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return [str(name) for name in value]
    return []


def on_pre_build(config: Any) -> None:
    """Warn about each public name that no page of ``docs/api/`` documents."""
    docs = Path(config["docs_dir"])
    root = docs.parent
    text = "\n".join(p.read_text() for p in sorted((docs / "api").glob("*.md")))
    rendered = {path for path, options in _DIRECTIVE.findall(text)}
    # "::: module" with "members: false" renders the module's docstring only.
    whole = {path for path, options in _DIRECTIVE.findall(text) if not _NO_MEMBERS.search(options)}
    referenced = set(_REFERENCE.findall(text))
    for module in PUBLIC_MODULES:
        for name in _exports(_source(root, module)):
            if name.startswith("__"):  # __version__: mentioned in the text
                continue
            if module in whole or f"{module}.{name}" in rendered:
                continue
            if any(
                ref.endswith(f".{name}") and (ref in rendered or ref.rsplit(".", 1)[0] in rendered)
                for ref in referenced
            ):
                continue
            log.warning(
                "API reference: %s.%s (in %s.__all__) is on no page of docs/api/: add "
                "'::: %s.%s' where it belongs",
                module,
                name,
                module,
                module,
                name,
            )
