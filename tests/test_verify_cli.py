"""verify (what it finds) and the maintenance commands: expire, gc, verify, du."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask.cli import CliError, main
from icechunk_dask.cli._maintenance import parse_time
from tests.helpers import make_array
from tests.lifecycle_helpers import age, files

SHAPE, CHUNKS = (528, 128), (264, 128)  # two chunk objects of 264 KiB


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """main: a (two chunk objects) and p (one pack of four small chunks), two commits; tag v1."""
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    session = repo.writable_session("main")
    make_array(session, "a", shape=SHAPE, chunks=CHUNKS)[:] = 1.0
    make_array(session, "p", shape=(8, 8), chunks=(4, 4))[:] = 2.0
    repo.create_tag("v1", session.commit("first"))
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:264] = 3.0
    session.commit("second")
    return repo


def _root(repo: Repository) -> Path:
    return Path(repo.storage.root)  # type: ignore[attr-defined]


def _chunk_objects(repo: Repository) -> list[Path]:
    return sorted((_root(repo) / "chunks").iterdir(), key=lambda p: p.stat().st_size)


def _problems(repo: Repository, **kw: bool) -> set[tuple[str, str]]:
    report = Repository.open(repo.storage).verify(**kw)
    assert report.ok == (not report.problems)
    return {(p.kind, p.key) for p in report.problems}


def test_a_sound_repository_verifies(repo: Repository) -> None:
    report = repo.verify(chunks=True, all_snapshots=True)
    assert report.ok, report.problems
    assert (report.refs, report.snapshots) == (2, 3)
    assert report.chunk_objects == 4  # 3 chunk objects of a + the pack of p
    # a: 2 refs in v1's layer, 2 in the tip's (which merged v1's small layer), one shared
    assert (report.chunk_refs, report.chunks_read) == (2 + 2 + 4, 2 + 1 + 4)


def test_missing_and_truncated_chunk_objects(repo: Repository) -> None:
    pack, *big = _chunk_objects(repo)
    big[0].unlink()
    pack.write_bytes(pack.read_bytes()[:-10])
    found = _problems(repo)
    assert found == {
        ("missing", f"chunks/{big[0].name}"),
        ("truncated", f"chunks/{pack.name}"),
    }


def test_chunk_checksums_only_with_chunks(repo: Repository) -> None:
    obj = _chunk_objects(repo)[-1]
    data = bytearray(obj.read_bytes())
    data[100] ^= 0xFF
    obj.write_bytes(bytes(data))
    assert _problems(repo) == set()  # same size: only reading the bytes can tell
    assert _problems(repo, chunks=True) == {("checksum", f"chunks/{obj.name}")}


def test_damaged_and_misplaced_metadata_objects(repo: Repository) -> None:
    root = _root(repo)
    tip = repo.lookup_branch("main")
    manifests = sorted(p.name for p in (root / "manifests").iterdir())
    (root / "manifests" / manifests[0]).write_bytes(
        (root / "manifests" / manifests[1]).read_bytes()
    )
    (root / "transactions" / tip).write_bytes(b"junk")
    (root / "refs" / "tag.v1.json").unlink()
    (root / "refs" / "tag.v2.json").write_bytes(b"junk")
    found = _problems(repo)
    assert ("corrupt", f"manifests/{manifests[0]}") in found
    assert ("corrupt", f"transactions/{tip}") in found
    assert ("corrupt", "refs/tag.v2.json") in found


def test_a_missing_snapshot_in_history(repo: Repository) -> None:
    first = list(repo.ancestry(branch="main"))[1].id
    (_root(repo) / "snapshots" / first).unlink()
    assert ("missing", f"snapshots/{first}") in _problems(repo)


def test_all_snapshots_also_checks_unreachable_ones(repo: Repository) -> None:
    repo.create_branch("b", repo.lookup_branch("main"))
    session = repo.writable_session("b")
    zarr.open_array(session.store, path="a")[:] = 9.0
    lost = session.commit("on b")
    repo.delete_branch("b")
    (_root(repo) / "transactions" / lost).unlink()
    assert _problems(repo) == set()
    assert _problems(repo, all_snapshots=True) == {("missing", f"transactions/{lost}")}


def test_parse_time() -> None:
    now = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("1d12h", now) == now - timedelta(hours=36)
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("2w", now) == now - timedelta(weeks=2)
    assert parse_time("0s", now) == now == parse_time("now", now)
    assert parse_time("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T12:00:00+01:00", now) == datetime(2026, 11, 1, 11, tzinfo=UTC)
    for bad in ("", "7", "7x", "yesterday", "-3d"):
        with pytest.raises(CliError, match="is not a time"):
            parse_time(bad, now)


def test_commands(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    location = str(_root(repo))
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 5.0  # two unreachable chunk objects

    assert main(["du", location, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kinds"]["chunks"]["unreachable"]["objects"] == 2
    assert doc["total"]["objects"] == len(files(_root(repo)))
    assert main(["du", location]) == 0
    assert "unreachable" in capsys.readouterr().out

    assert main(["expire", location, "--older-than", "0s"]) == 0
    assert "expired 0 snapshot(s)" in capsys.readouterr().out  # first is tagged, second the tip

    age(_root(repo), 7200)
    assert main(["gc", location, "--older-than", "1h", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete 2 object(s)") and "chunks" in out
    assert len(_chunk_objects(repo)) == 6
    assert main(["gc", location, "--older-than", "30m", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["deleted"]["chunks"]["objects"] == 2 and not doc["dry_run"]
    assert len(_chunk_objects(repo)) == 4

    assert main(["verify", location, "--chunks"]) == 0
    assert "no problems found" in capsys.readouterr().out
    _chunk_objects(repo)[-1].unlink()
    assert main(["verify", location]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s):" in out and "missing: chunks/" in out
    assert main(["verify", location, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert not doc["ok"] and doc["problems"][0]["kind"] == "missing"

    assert main(["gc", location, "--older-than", "soon"]) == 1
    assert "is not a time" in capsys.readouterr().err
