"""The README runs as written: the quickstart, the S3 demo commands, and its links.

The quickstart runs on a real LocalCluster in a fresh process; the commands
that try the demo on object storage run against a real SeaweedFS server on
127.0.0.1, started by the test fixtures as ``python -m tests.servers
seaweedfs`` starts it by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers._seaweed import SeaweedServer

pytest_plugins = ["tests.servers.seaweed"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _block(after: str, language: str) -> str:
    text = README.read_text()
    start = text.index(f"```{language}", text.index(after)) + len(f"```{language}\n")
    return text[start : text.index("```", start)]


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(_block("## Quickstart", "python"))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "data" / "repo" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.seaweedfs
def test_the_s3_demo_commands_run(tmp_path: Path, seaweed_server: SeaweedServer) -> None:
    """The commands after ``python -m tests.servers seaweedfs``, with its ``export`` lines."""
    starter = _block("To try it on object storage", "bash")
    assert starter.strip() == "python -m tests.servers seaweedfs"
    commands = _block("then paste those `export` lines", "bash")
    assert "s3://icechunk-dask/demo" in commands  # the bucket the server command creates
    bucket = seaweed_server.create_bucket()
    script = commands.replace("s3://icechunk-dask/", f"s3://{bucket}/").replace(
        "--allow-http\nicechunk-dask log",
        "--allow-http --size-mb 4 --workers 1 --threads 1 --no-progress\nicechunk-dask log",
    )  # a smaller dataset than the default 300 MB, on one worker
    assert "--size-mb 4" in script
    bindir = Path(sys.executable).parent  # icechunk-dask is installed next to this Python
    env = {
        **os.environ,
        **seaweed_server.env(),
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "verified  read back" in done.stdout and "OK, identical to the source" in done.stdout
    assert re.search(r"^[0-9A-Z]{20} .*\(main\)\s+demo: write ", done.stdout, re.MULTILINE), (
        done.stdout
    )
    assert "Repository initialized" in done.stdout.splitlines()[-1]


def test_relative_links_point_to_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert "docs/coming-from-icechunk.md" in local and "docs/storage.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing
