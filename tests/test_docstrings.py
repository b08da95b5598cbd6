"""Every public callable has a complete numpydoc docstring, checked by numpydoc's validator.

Public: the names in ``__all__`` of the documented modules (``PUBLIC_MODULES``, the
modules the API reference renders), and for each public class its constructor (documented
in the class docstring, as mkdocstrings shows it), its public methods and properties,
including those it inherits from the package's own (possibly private) base classes.

For each of them, ``numpydoc.validate`` must report none of ``CHECKS``: a docstring
(GL08) with a one-line summary (SS01, SS03); every parameter documented (PR01), with a
type (PR04) and a description (PR07), nothing documented that does not exist (PR02) and
in the signature's order (PR03); a Returns section when something is returned (RT01),
described (RT03); a Yields section for generators (YD01). Two checks numpydoc cannot make
from the source are added (``_extra_errors``): a Returns section also for methods whose
body returns nothing but whose annotation says they return something (abstract methods,
protocols), and a Yields section for async generators.

``ALLOWED`` lists the few findings that are false positives, each with its reason; an
entry that no longer matches anything fails the test, so the list cannot go stale.
"""

from __future__ import annotations

import enum
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from numpydoc.validate import validate

PUBLIC_MODULES = (
    "icechunk_dask",
    "icechunk_dask.dask",
    "icechunk_dask.distributed",
    "icechunk_dask.storage",
    "icechunk_dask.testing",
    "icechunk_dask.xarray",
)

CHECKS = frozenset(
    {
        "GL08",  # no docstring
        "SS01",  # no summary
        "SS03",  # summary does not end with a period
        "PR01",  # parameter not documented
        "PR02",  # documented parameter that does not exist
        "PR03",  # parameters documented in another order than the signature's
        "PR04",  # parameter without a type
        "PR07",  # parameter without a description
        "PR10",  # "name: type" instead of "name : type"
        "RT01",  # returns something, no Returns section
        "RT03",  # Returns entry without a description
        "YD01",  # generator without a Yields section
    }
)

#: (object, check) -> why the finding is a false positive. Keep it short and explained.
ALLOWED: dict[tuple[str, str], str] = {
    # An async generator (it has a Yields section, checked by _extra_errors). numpydoc skips
    # the returns of nested functions but not of nested *async* functions, and takes the
    # `return` of its inner `async def collect()` for the method's own.
    ("icechunk_dask.storage._faulty.FaultyStorage.list_objects", "RT01"): "numpydoc",
}

#: Classes whose "constructor" is not one: enum lookups by value (``Enum(*values)``) and
#: protocols (``Protocol(*args, **kwargs)``), which are never instantiated. Their
#: docstrings are still checked; only the parameters of the call signature are not.
_NO_CONSTRUCTOR_CHECKS = frozenset({"PR01", "PR02", "PR03"})


def _is_public_member(member: object) -> bool:
    return inspect.isfunction(member) or isinstance(member, property | classmethod | staticmethod)


def _members(cls: type) -> Iterator[tuple[str, object]]:
    """``(import path, member)`` of the public methods and properties users get on ``cls``.

    Members defined in the package's own classes of the MRO, the most derived definition
    of each name (what ``cls().name`` is); not those of other libraries' base classes
    (zarr's ``Store``, Hypothesis's ``RuleBasedStateMachine``).
    """
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("icechunk_dask"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen or not _is_public_member(member):
                continue
            seen.add(name)
            yield f"{klass.__module__}.{klass.__qualname__}.{name}", member


def _targets() -> dict[str, Any]:
    """Import path -> object, for every public callable (each object once)."""
    out: dict[str, Any] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants (__version__, PROFILES)
            out.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if inspect.isclass(obj):
                for path, member in _members(obj):
                    out.setdefault(path, member)
    return out


def _extra_errors(obj: Any, result: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns and Yields sections that numpydoc does not ask for (see the module docstring)."""
    func = obj.__func__ if isinstance(obj, classmethod | staticmethod) else obj
    if not inspect.isfunction(func):
        return []
    doc = result["docstring"]
    errors = []
    if inspect.isasyncgenfunction(func):
        if "\nYields\n" not in f"\n{doc}":
            errors.append(("YD01", "async generator without a Yields section"))
        return errors
    returns = inspect.signature(func).return_annotation
    returns_something = returns not in (inspect.Signature.empty, "None", None)
    is_generator = inspect.isgeneratorfunction(inspect.unwrap(func))
    reported = any(code == "RT01" for code, _ in result["errors"])
    if returns_something and not is_generator and not reported and "\nReturns\n" not in f"\n{doc}":
        errors.append(("RT01", f"annotated to return {returns}, no Returns section"))
    return errors


def _findings() -> dict[tuple[str, str], list[str]]:
    findings: dict[tuple[str, str], list[str]] = {}
    for path, obj in sorted(_targets().items()):
        result = validate(path)
        errors = [
            *result["errors"],
            *([] if not result["docstring"] else _extra_errors(obj, result)),
        ]
        for code, message in errors:
            if code not in CHECKS:
                continue
            if (
                inspect.isclass(obj)
                and (issubclass(obj, enum.Enum) or getattr(obj, "_is_protocol", False))
                and code in _NO_CONSTRUCTOR_CHECKS
            ):
                continue
            findings.setdefault((path, code), []).append(message)
    return findings


@pytest.fixture(scope="module")
def findings() -> dict[tuple[str, str], list[str]]:
    return _findings()


def test_public_docstrings_are_complete(findings: dict[tuple[str, str], list[str]]) -> None:
    problems = [
        f"{path}: {code} {message}"
        for (path, code), messages in sorted(findings.items())
        if (path, code) not in ALLOWED
        for message in messages
    ]
    assert not problems, "incomplete public docstrings:\n" + "\n".join(problems)


def test_allow_list_is_still_needed(findings: dict[tuple[str, str], list[str]]) -> None:
    stale = sorted(set(ALLOWED) - set(findings))
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"


def test_the_check_sees_what_it_claims_to() -> None:
    targets = _targets()
    # a re-export is checked once, under its defining module
    assert "icechunk_dask.xarray.to_zarr" in targets
    # constructors through the class, methods, properties, classmethods
    for path in (
        "icechunk_dask._repository.Repository",
        "icechunk_dask._repository.Repository.create",
        "icechunk_dask._session.Session.commit",
        "icechunk_dask._session.Session.store",
        "icechunk_dask._store.SessionStore.get",
        # inherited from a private base class of the package
        "icechunk_dask.storage._obstore.ObstoreStorage.get",
        "icechunk_dask.storage._base.Storage.get",
    ):
        assert path in targets, path
    # not other libraries' methods (zarr's Store.is_empty), not private ones
    assert all(p.startswith("icechunk_dask.") for p in targets)
    assert not any(p.rsplit(".", 1)[1].startswith("_") for p in targets)
