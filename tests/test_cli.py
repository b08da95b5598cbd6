"""The ``icechunk-dask`` command: inspection commands, errors, and the demo on a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _dataset(t0: int, nt: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed + t0)
    return xr.Dataset(
        {"temp": (("time", "y", "x"), rng.normal(size=(nt, 4, 6)).astype("f4"))},
        coords={"time": np.arange(t0, t0 + nt), "y": np.arange(4.0), "x": np.arange(6.0)},
    )


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: init -> write 4 steps (tag v1) -> append 2 steps; experiment: one extra commit."""
    path = tmp_path_factory.mktemp("cli") / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    session = repo.writable_session("main")
    _dataset(0, 4).to_zarr(
        session.store, mode="w", consolidated=False, encoding={"temp": {"chunks": (1, 4, 3)}}
    )
    first = session.commit("write 4 steps", {"source": "test"})
    repo.create_tag("v1", first)
    session = repo.writable_session("main")
    _dataset(4, 2).to_zarr(session.store, append_dim="time", consolidated=False)
    session.commit("append 2 steps")
    repo.create_branch("experiment", first)
    session = repo.writable_session("experiment")
    _dataset(0, 4, seed=100).to_zarr(session.store, mode="r+", consolidated=False, region="auto")
    session.commit("overwrite with other values")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# -- log, branches, tags -----------------------------------------------------------------------


def test_log_lists_the_ancestry_of_main_newest_first(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = run_json(capsys, "log", str(repo_path))
    assert [e["message"] for e in log] == [
        "append 2 steps",
        "write 4 steps",
        "Repository initialized",
    ]
    assert log[0]["refs"] == ["main"]
    assert log[1]["refs"] == ["tag: v1"]
    assert log[1]["metadata"] == {"source": "test"}
    assert log[0]["parent_id"] == log[1]["id"]
    assert log[-1]["parent_id"] is None

    code, out, _ = run_cli(capsys, "log", str(repo_path))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(log[0]["id"])
    assert "(main)" in lines[0] and "append 2 steps" in lines[0]


def test_log_of_another_branch_and_max_count(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = run_json(capsys, "log", str(repo_path), "experiment", "-n", "2")
    assert [e["message"] for e in log] == ["overwrite with other values", "write 4 steps"]


def test_branches_and_tags(repo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository.open(local_filesystem_storage(repo_path))
    branches = run_json(capsys, "branches", str(repo_path))
    assert [(b["name"], b["snapshot_id"]) for b in branches] == [
        ("experiment", repo.lookup_branch("experiment")),
        ("main", repo.lookup_branch("main")),
    ]
    tags = run_json(capsys, "tags", str(repo_path))
    assert [(t["name"], t["snapshot_id"], t["message"]) for t in tags] == [
        ("v1", repo.lookup_tag("v1"), "write 4 steps")
    ]
    code, out, _ = run_cli(capsys, "branches", str(repo_path))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["experiment", "main"]


def test_tags_when_there_are_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Repository.create(local_filesystem_storage(tmp_path / "r"))
    assert run_json(capsys, "tags", str(tmp_path / "r")) == []
    code, out, _ = run_cli(capsys, "tags", str(tmp_path / "r"))
    assert (code, out.strip()) == (0, "(none)")


# -- show ----------------------------------------------------------------------------------------


def test_show_lists_arrays_shapes_and_chunk_counts(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = run_json(capsys, "show", str(repo_path))
    arrays = {a["path"]: a for a in shown["arrays"]}
    assert set(arrays) == {"temp", "time", "x", "y"}
    temp = arrays["temp"]
    assert temp["shape"] == [6, 4, 6]
    assert temp["chunk_shape"] == [1, 4, 3]
    assert temp["dtype"] == "float32"
    assert temp["dimension_names"] == ["time", "y", "x"]
    assert (temp["chunks_stored"], temp["chunks_total"]) == (12, 12)
    assert temp["nbytes"] == 6 * 4 * 6 * 4
    assert shown["groups"] == [""]
    assert shown["message"] == "append 2 steps"
    assert shown["refs"] == ["main"]

    code, out, _ = run_cli(capsys, "show", str(repo_path))
    assert code == 0
    temp_line = next(line for line in out.splitlines() if line.strip().startswith("temp "))
    assert "(6, 4, 6)" in temp_line and "12/12" in temp_line and "float32" in temp_line


@pytest.mark.parametrize("ref", ["v1", "main~1", "main~", "experiment~1"])
def test_show_accepts_tags_and_ancestors(
    repo_path: Path, capsys: pytest.CaptureFixture[str], ref: str
) -> None:
    shown = run_json(capsys, "show", str(repo_path), ref)
    assert shown["message"] == "write 4 steps"
    temp = next(a for a in shown["arrays"] if a["path"] == "temp")
    assert temp["shape"] == [4, 4, 6]
    assert temp["chunks_stored"] == 8


def test_show_accepts_a_snapshot_id(repo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = run_json(capsys, "log", str(repo_path))
    first = log[-1]["id"]
    shown = run_json(capsys, "show", str(repo_path), first)
    assert (shown["id"], shown["arrays"], shown["groups"]) == (first, [], [])


# -- diff ----------------------------------------------------------------------------------------


def test_diff_of_an_append(repo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, "diff", str(repo_path), "v1", "main")
    assert d["updated_arrays"] == ["/temp", "/time"]
    assert d["new_arrays"] == d["deleted_arrays"] == []
    assert d["updated_chunks"]["/temp"] == [[4, 0, 0], [4, 0, 1], [5, 0, 0], [5, 0, 1]]
    assert d["updated_chunks"]["/time"] == [[1]]

    code, out, _ = run_cli(capsys, "diff", str(repo_path), "v1", "main")
    assert code == 0
    assert "/temp: shape (4, 4, 6) -> (6, 4, 6)" in out
    assert "/temp  4 chunks" in out


def test_diff_across_branches_and_from_the_empty_root(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = run_json(capsys, "diff", str(repo_path), "main", "experiment")
    assert len(d["updated_chunks"]["/temp"]) == 12  # 8 modified, 4 removed
    root = run_json(capsys, "log", str(repo_path))[-1]["id"]
    d = run_json(capsys, "diff", str(repo_path), root, "v1")
    assert d["new_groups"] == ["/"]
    assert d["new_arrays"] == ["/temp", "/time", "/x", "/y"]
    assert len(d["updated_chunks"]["/temp"]) == 8


def test_diff_of_a_snapshot_with_itself(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = run_json(capsys, "diff", str(repo_path), "v1", "experiment~1")
    assert d["updated_chunks"] == {} and d["updated_arrays"] == []
    code, out, _ = run_cli(capsys, "diff", str(repo_path), "v1", "experiment~1")
    assert code == 0 and out.splitlines()[-1] == "no changes"


# -- errors --------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "log", str(tmp_path / "nope"), "--json")
    assert code == 1 and err == ""  # with --json the error is a JSON document too
    assert "no such directory" in json.loads(out)["error"]["message"]
    assert not (tmp_path / "nope").exists()  # inspecting never creates anything


def test_file_instead_of_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "show", str(tmp_path / "f"))
    assert code == 1 and "is a file" in err


def test_foreign_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "branches", str(tmp_path / "empty"))
    assert code == 1 and "not an icechunk-dask repository" in err and "empty" in err

    zarr.create_array(str(tmp_path / "plain"), shape=(4,), dtype="i4")
    code, _, err = run_cli(capsys, "log", str(tmp_path / "plain"))
    assert code == 1 and "plain Zarr store" in err

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    code, _, err = run_cli(capsys, "tags", str(tmp_path / "other"))
    assert code == 1 and "no config.json" in err


def test_unknown_ref_and_short_history(repo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "show", str(repo_path), "nosuchbranch")
    assert code == 1
    assert "(not-found)" in err and "'nosuchbranch' is not a branch, tag or snapshot id" in err
    assert "experiment" in err  # lists what exists
    code, _, err = run_cli(capsys, "diff", str(repo_path), "main~9", "main")
    assert code == 1 and "only 3 snapshots" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["show"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


# -- a real process ------------------------------------------------------------------------------


def test_python_dash_m_log_json_in_a_subprocess(repo_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "icechunk_dask", "log", str(repo_path), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [e["message"] for e in json.loads(proc.stdout)][:2] == [
        "append 2 steps",
        "write 4 steps",
    ]

    proc = subprocess.run(
        [sys.executable, "-m", "icechunk_dask", "log", str(repo_path / "missing")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "no such directory" in proc.stderr and "Traceback" not in proc.stderr


# -- the demo ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_writes_then_appends_on_a_local_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "demo"
    first = run_json(
        capsys, "demo", "--path", str(path), "--size-mb", "2", "--chunk-mb", "0.05",
        "--workers", "2", "--threads", "1",
    )  # fmt: skip
    assert first["mode"] == "create" and first["verified"] is True
    assert first["chunks_written"] > 3 and first["bytes_written"] > 1_000_000
    assert first["workers"] == 2

    code, out, _ = run_cli(capsys, "demo", "--path", str(path), "--size-mb", "1", "--workers", "1")
    assert code == 0
    assert "OK, identical to the source" in out
    assert f"icechunk-dask log {path}" in out

    log = run_json(capsys, "log", str(path))
    assert len(log) == 3 and log[0]["message"].startswith("demo: append")
    assert log[1]["id"] == first["snapshot_id"]
    shown = run_json(capsys, "show", str(path))
    arrays = {a["path"]: a for a in shown["arrays"]}
    assert set(arrays) >= {"air_temperature", "surface_pressure", "wind_speed", "time"}
    ntime = arrays["air_temperature"]["shape"][0]
    assert ntime > first["shape"][0]
    assert arrays["air_temperature"]["chunks_stored"] == arrays["air_temperature"]["chunks_total"]

    ds = xr.open_zarr(
        Repository.open(local_filesystem_storage(path)).readonly_session("main").store,
        consolidated=False,
    )
    assert ds.sizes["time"] == ntime
    assert (np.diff(ds.time.values) == np.timedelta64(1, "h")).all()


def test_demo_refuses_a_repository_with_other_data(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "demo", "--path", str(repo_path), "--size-mb", "1")
    assert code == 1 and "holds other data" in err


@pytest.mark.parametrize(
    "bad", [["--workers", "0"], ["--threads", "-1"], ["--size-mb", "0"], ["--memory-limit", "lots"]]
)
def test_demo_rejects_bad_options_before_touching_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    code, _, err = run_cli(capsys, "demo", "--path", str(tmp_path / "d"), *bad)
    assert code == 1 and "(invalid-input)" in err
    assert not (tmp_path / "d").exists()


# -- branch and tag management -------------------------------------------------------------------


def test_branch_and_tag_create_reset_delete_with_guards(
    repo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(repo_path)
    log = run_json(capsys, "log", path)
    tip, older = log[0]["id"], log[1]["id"]
    made = run_json(capsys, "branch", "create", path, "fix", "main~1")
    assert made == {"branch": "fix", "snapshot_id": older}
    code, out, _ = run_cli(capsys, "branch", "reset", path, "fix", "main", "--from", tip, "--json")
    assert code == 1 and json.loads(out)["error"]["kind"] == "branch-moved"  # fix is at older
    assert (
        run_json(capsys, "branch", "reset", path, "fix", "main", "--from", older)["snapshot_id"]
        == tip
    )
    code, _, err = run_cli(capsys, "branch", "delete", path, "fix", "--from", older)
    assert code == 1 and "(branch-moved)" in err
    assert run_json(capsys, "branch", "delete", path, "fix", "--from", tip) == {
        "deleted_branch": "fix"
    }
    assert "fix" not in {b["name"] for b in run_json(capsys, "branches", path)}
    assert run_json(capsys, "tag", "create", path, "release", "main~1") == {
        "tag": "release",
        "snapshot_id": older,
    }
    code, _, err = run_cli(capsys, "tag", "create", path, "release")
    assert code == 1 and "already exists" in err
    run_json(capsys, "tag", "delete", path, "release", "--from", older)
    code, _, err = run_cli(capsys, "branch", "delete", path, "main")
    assert code == 1 and "cannot be deleted" in err


def test_usage_errors_exit_2_and_help_needs_no_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(capsys, "branch")[0] == 2
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "LOCATION" in out
