"""MkDocs hook: links from a page to repository files outside ``docs/`` become file names.

The guides link to files of the repository that are not part of the site (``[notebook
01](../notebooks/01-seed-parallel-writes.ipynb)``): useful when reading ``docs/`` in the
repository, broken on the site. On the site, such a link becomes its text followed by the
file's path as code (or just the path when the text names the file). Only links to files that
exist are rewritten: a link to a missing file stays, and fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")

_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _rewrite(line: str, page_dir: PurePosixPath, docs: Path, root: Path) -> str:
    def replace(m: re.Match[str]) -> str:
        text, target = m[1], m[2]
        if "://" in target or target.startswith(("/", "mailto:")):
            return m[0]
        path = (docs / page_dir / target).resolve()
        if path.is_relative_to(docs.resolve()) or not path.is_relative_to(root):
            return m[0]
        if not path.exists():
            return m[0]  # a broken link: the strict build reports it
        rel = path.relative_to(root).as_posix()
        if text.strip("`") in (rel, path.name):
            return f"`{rel}`"
        return f"{text} (`{rel}`)"

    return _LINK.sub(replace, line)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite the page's links to repository files outside the docs directory."""
    docs = Path(config["docs_dir"])
    root = docs.resolve().parent
    page_dir = PurePosixPath(page.file.src_uri).parent
    out, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            new = _rewrite(line, page_dir, docs, root)
            if new != line:
                log.debug("%s: %r -> %r", page.file.src_uri, line, new)
            line = new
        out.append(line)
    return "\n".join(out)
