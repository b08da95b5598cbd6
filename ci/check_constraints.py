"""Check that ci/constraints-lowest.txt pins exactly the floors declared in pyproject.toml.

Usage::

    python ci/check_constraints.py

Every ``>=`` floor in ``[project].dependencies`` and in the ``s3`` extra (the test tools of
the ``test`` extra are left to float, see the constraints file) must be pinned with ``==`` to that version, and every pin must
belong to such a floor. Exits 1 and names each difference otherwise.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "ci" / "constraints-lowest.txt"
EXTRAS = ("s3",)  # the runtime extras


def floors() -> dict[str, Version]:
    """The ``>=`` floors of the dependencies and of ``EXTRAS``, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    out: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == canonicalize_name(project["name"]):
            continue
        for spec in req.specifier:
            if spec.operator == ">=":
                out[name] = max(out.get(name, Version(spec.version)), Version(spec.version))
    return out


def pins() -> dict[str, Version]:
    """The ``==`` pins of the constraints file, by canonical name."""
    out: dict[str, Version] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        if spec.operator != "==":
            sys.exit(f"{CONSTRAINTS.name}: pin with ==, not {spec.operator}: {raw!r}")
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def main() -> int:
    """Compare, print the differences, return the exit status."""
    want, have = floors(), pins()
    problems = []
    for name, floor in sorted(want.items()):
        if name not in have:
            problems.append(f"{name}: floor {floor} in pyproject.toml is not pinned")
        elif have[name] != floor:
            problems.append(f"{name}: pinned {have[name]}, but the floor is {floor}")
    problems += [
        f"{name}: pinned {have[name]}, but pyproject.toml has no floor for it"
        for name in sorted(have.keys() - want.keys())
    ]
    for p in problems:
        print(f"ci/constraints-lowest.txt: {p}", file=sys.stderr)
    if problems:
        print("Make ci/constraints-lowest.txt pin each floor of pyproject.toml.", file=sys.stderr)
        return 1
    print(f"ci/constraints-lowest.txt pins the {len(want)} floors of pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
