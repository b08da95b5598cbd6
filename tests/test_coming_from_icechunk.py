"""docs/coming-from-icechunk.md: the migrated program runs, and only its imports changed.

The page shows a program written for Icechunk 2.x ("before") and the same
program for icechunk_dask ("after"). This test runs the "after" program as
written, in a fresh process (it starts a process pool), and checks that the
two programs differ in their import lines only, as the page claims.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "coming-from-icechunk.md"


def _program(marker: str) -> str:
    text = PAGE.read_text()
    start = text.index("```python", text.index(marker)) + len("```python\n")
    return text[start : text.index("```", start)]


def test_before_and_after_differ_only_in_their_imports() -> None:
    before, after = _program("<!-- before -->"), _program("<!-- after -->")
    changed = [
        line[1:]
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed, "the two programs are identical"
    assert all(line.startswith(("import ", "from ")) for line in changed), changed
    assert "import icechunk_dask as icechunk" in changed
    assert "icechunk_dask" not in before and "import icechunk\n" not in after


@pytest.mark.slow
def test_the_migrated_program_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "after.py"
    script.write_text(_program("<!-- after -->"))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "ok", done.stdout
    # one new array; 7 chunks of t changed (step 0 was rewritten with the zeros it held)
    assert lines[-2] == "['/v'] 7", done.stdout
    messages = [line.split(" ", 3)[-1] for line in lines[:-2]]
    assert messages == [
        "my fix",
        "their fix",
        "v with store_dask",
        "one time step per process task",
        "initialise with zeros",
        "Repository initialized",
    ]
    assert (tmp_path / "data" / "repo" / "config.json").is_file()
