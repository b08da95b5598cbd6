"""Render the API reference (docs/api.md) from the package's docstrings.

Usage::

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is out of date

Documents the names in ``__all__`` of the public modules (each object once, under
the first module that exports it) and the ``icechunk-dask`` command's help.
Docstrings are numpydoc; the sections used in this package (Parameters,
Returns, Yields, Raises, Attributes, Examples, Notes, See Also) are turned
into Markdown, and Sphinx roles into code spans.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

MODULES = [
    ("icechunk_dask", "Repositories, sessions, change records and errors"),
    ("icechunk_dask.xarray", "Writing xarray objects with Dask"),
    ("icechunk_dask.dask", "Writing dask arrays"),
    ("icechunk_dask.distributed", "Merging sessions from any executor"),
    ("icechunk_dask.storage", "Storage backends"),
    ("icechunk_dask.testing", "Testing helpers (strategies, models, state machines)"),
]

_SECTION = re.compile(r"^\s*-{3,}\s*$")
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|obj|exc|ref):`(~?)([^`]+)`")
_PARAM_SECTIONS = {"Parameters", "Other Parameters", "Attributes"}
_TYPE_SECTIONS = {"Returns", "Yields", "Raises", "Warns"}


def _inline(text: str) -> str:
    """Sphinx/RST inline markup -> Markdown."""

    def role(m: re.Match[str]) -> str:
        target = m[2]
        if m[1] == "~":
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    text = _ROLE.sub(role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _split_sections(doc: str) -> list[tuple[str, list[str]]]:
    lines = inspect.cleandoc(doc).splitlines()
    sections: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _SECTION.match(lines[i + 1]):
            sections.append((lines[i].strip(), []))
            i += 2
            continue
        sections[-1][1].append(lines[i])
        i += 1
    return sections


def _entries(lines: list[str]) -> Iterator[tuple[str, list[str]]]:
    head: str | None = None
    body: list[str] = []
    for line in lines:
        if line and not line[0].isspace():
            if head is not None:
                yield head, body
            head, body = line.strip(), []
        elif head is not None:
            body.append(line.strip())
    if head is not None:
        yield head, body


def _paragraph(lines: list[str]) -> str:
    return _inline(" ".join(x for x in lines if x).strip())


def _render_doc(doc: str | None) -> list[str]:
    if not doc:
        return []
    out: list[str] = []
    for title, lines in _split_sections(doc):
        if not title:
            out += _render_text(lines)
            continue
        out += [f"**{title}**", ""]
        if title in _PARAM_SECTIONS:
            for head, body in _entries(lines):
                name, _, typ = head.partition(" : ")
                names = ", ".join(f"`{n.strip()}`" for n in name.split(","))
                typ_md = f" ({_inline(typ.strip())})" if typ.strip() else ""
                out.append(f"- {names}{typ_md}: {_paragraph(body)}".rstrip(": "))
        elif title in _TYPE_SECTIONS:
            for head, body in _entries(lines):
                out.append(f"- `{_inline(head).strip('`')}`: {_paragraph(body)}".rstrip(": "))
        elif title == "Examples":
            code = "\n".join(lines).strip("\n")
            out += ["```pycon", code, "```"]
        else:
            out += _render_text(lines)
        out.append("")
    return out


def _render_text(lines: list[str]) -> list[str]:
    """Plain paragraphs; ``::`` literal blocks become fenced code."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            text = line.rstrip()[:-1].rstrip()
            if text and text != ":":
                out.append(_inline(text if text.endswith(":") else text + ":"))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            out += ["", "```", inspect.cleandoc("\n".join(block)), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    while out and not out[-1].strip():
        out.pop()
    return [*out, ""]


def _signature(name: str, obj: Any) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return name
    sig = sig.replace("'", "")
    one = f"{name}{sig}"
    if len(one) <= 92:
        return one
    params = list(inspect.signature(obj).parameters.values())
    ret = sig[sig.rindex(")") + 1 :] if ") ->" in sig else ""
    # one parameter per line; keep the bare "*" marker that str(Parameter) does not show
    rendered: list[str] = []
    seen_kwonly = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            if not any(q.kind is q.VAR_POSITIONAL for q in params):
                rendered.append("    *")
            seen_kwonly = True
        rendered.append(f"    {str(p).replace(chr(39), '')}")
    inner = ",\n".join(rendered)
    return f"{name}(\n{inner},\n){ret}"


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if name == "__init__":
            continue
        if isinstance(value, property | classmethod | staticmethod) or inspect.isfunction(value):
            doc = (
                value.__doc__
                if not isinstance(value, classmethod | staticmethod)
                else (value.__func__.__doc__)
            )
            if doc:
                yield name, value


def _render_class(qual: str, cls: type) -> list[str]:
    out = [f"### `{qual}`", ""]
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    if issubclass(cls, enum.Enum):
        out += ["```python", f"class {cls.__name__}({', '.join(bases)})", "```", ""]
        out += _render_doc(cls.__doc__)
        out += [f"- `{m.name}` = `{m.value!r}`" for m in cls]
        return [*out, ""]
    if issubclass(cls, BaseException):
        out += ["```python", f"class {cls.__name__}({', '.join(bases)})", "```", ""]
        return out + _render_doc(cls.__doc__)
    init = vars(cls).get("__init__")
    head = (
        _signature(f"class {cls.__name__}", init) if init is not None else f"class {cls.__name__}"
    )
    head = head.replace("(self, ", "(").replace("(\n    self,\n", "(\n").replace("(self)", "()")
    head = head.removesuffix(" -> None")
    out += ["```python", head, "```", ""]
    out += _render_doc(cls.__doc__)
    if dataclasses.is_dataclass(cls):
        out += ["**Fields**", ""]
        out += [f"- `{f.name}`: `{f.type}`" for f in dataclasses.fields(cls)]
        out.append("")
    for name, member in _members(cls):
        if isinstance(member, property):
            out += [f"#### `{cls.__name__}.{name}` (property)", ""]
            out += _render_doc(member.__doc__)
            continue
        func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        prefix = "classmethod " if isinstance(member, classmethod) else ""
        prefix = "staticmethod " if isinstance(member, staticmethod) else prefix
        prefix += "async " if inspect.iscoroutinefunction(func) else ""
        sig = _signature(f"{cls.__name__}.{name}", func)
        sig = sig.replace("(self, ", "(").replace("(cls, ", "(").replace("(self)", "()")
        sig = (
            sig.replace("(cls)", "()")
            .replace("(\n    self,\n", "(\n")
            .replace("(\n    cls,\n", "(\n")
        )
        out += [f"#### `{cls.__name__}.{name}`", "", "```python", prefix + sig, "```", ""]
        out += _render_doc(func.__doc__)
    return out


def _render_object(module: str, name: str, obj: Any) -> list[str]:
    qual = f"{module}.{name}"
    if inspect.isclass(obj):
        return _render_class(qual, obj)
    if callable(obj):
        return [
            f"### `{qual}`",
            "",
            "```python",
            ("async " if inspect.iscoroutinefunction(obj) else "") + _signature(name, obj),
            "```",
            "",
            *_render_doc(obj.__doc__),
        ]
    return [f"### `{qual}`", "", f"`{obj!r}`", ""]


def _cli_help() -> list[str]:
    from icechunk_dask.cli import build_parser

    parser = build_parser()
    out = ["## The `icechunk-dask` command", ""]
    out += ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"### `icechunk-dask {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return out


def render() -> str:
    """The whole of docs/api.md."""
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width
    os.environ["NO_COLOR"] = "1"
    seen: dict[int, str] = {}
    out = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings: do not edit by hand. -->",
        "",
        "Everything listed here is public; anything else (names starting with `_`, modules",
        "starting with `_`) may change without notice.",
        "",
    ]
    toc: list[str] = []
    body: list[str] = []
    for module_name, title in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:  # an optional dependency is missing
            print(f"gen_api: skipping {module_name}: {e}", file=sys.stderr)
            continue
        names = [n for n in getattr(module, "__all__", []) if not n.startswith("__")]
        toc.append(f"- [`{module_name}`](#{module_name.replace('.', '')}): {title}")
        body += [f"## `{module_name}`", "", title + ".", ""]
        doc = (module.__doc__ or "").strip()
        if doc:
            body += _render_text(inspect.cleandoc(doc).splitlines())
        for name in names:
            obj = getattr(module, name)
            key = id(obj)
            if key in seen and (inspect.isclass(obj) or callable(obj)):
                body += [f"- `{module_name}.{name}`: see `{seen[key]}`", ""]
                continue
            seen[key] = f"{module_name}.{name}"
            body += _render_object(module_name, name, obj)
    toc.append("- [The `icechunk-dask` command](#the-icechunk-dask-command)")
    text = "\n".join([*out, *toc, "", *body, *_cli_help()])
    text = re.sub(r"\n{3,}", "\n\n", text)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/api.md, or check that it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
