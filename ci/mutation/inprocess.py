"""Every mutant of one module against its fast tests, in one pytest process (issue 13).

``ci/mutation/run.sh`` starts a fresh pytest worker for every mutant; with the selections'
start-up cost (zarr, dask, collecting the test files) a module of 400-600 mutants takes
hours on two cores, and the runs so far stopped at their budget with mutants unchecked.
This script makes the same mutants with mutmut (same version, same scratch copy of the
tree, same selections from ``modules.txt``) and then tests them all in *one* pytest process:

1. every test of the selection runs once without a mutant, recording which functions of the
   module it calls (mutmut's trampolines, in their "stats" mode) and how long it takes; a
   test that fails here stops the run;
2. for each mutant, the tests that call its function run (fastest first) until one fails:
   the mutant is *killed* (a test exceeding 10x its clean time plus 10 s is stopped by
   ``SIGALRM`` and counts as a kill, a *timeout*); when all pass it *survived*; a mutant no
   test calls has *no tests*;
3. the test that killed a mutant runs again without it: if it fails then too, state was
   left behind (a module-level cache, a thread pool, the event loop's thread still running
   a mutant's endless loop). Then, and after every timeout, the pytest process ends and a
   new one resumes after the last verdict written; a mutant that was the first of its
   process and still left state behind is killed all the same;
4. every survivor is tested again in a fresh pytest process (the test files of the tests
   that call its function, ``-x``), as ``run.sh`` does for every mutant: state made once
   per process by the clean run (a thread pool, a cache) hides some mutants from step 2.
   Only mutants that survive this too are reported as survivors.

Tests in child processes see the mutant too (``MUTANT_UNDER_TEST`` is in the environment),
as with mutmut. Output: one JSON line per mutant in ``<workdir>/<module>.jsonl``, the diffs
of the survivors in ``<workdir>/<module>.txt`` and a summary line on stdout.

Usage::

    source ci/env.sh && python -m pip install mutmut==3.8.1
    python ci/mutation/inprocess.py icechunk_dask/_listing.py [--workdir DIR] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol
from mutmut.mutation import trampoline

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


# --------------------------------------------------------------------------------- plugin
# The pytest plugin half: this file is copied into the scratch copy's ``mutants`` folder as
# ``_mutloop.py`` and loaded with ``-p _mutloop``; MUTLOOP_* variables configure it.


#: exit code of a pytest process that must be started again (resuming) for a clean state
_RESTART = 75


class _Alarm(Exception):
    """A test ran past its time limit under a mutant."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm("time limit")


def _run_item(item: Any, nextitem: Any, limit: float | None) -> tuple[bool, bool]:
    """Run one test; return (passed, timed out)."""
    if limit is not None:
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    failed = [r for r in reports if r.failed]
    timed_out = any("_Alarm" in str(r.longrepr) for r in failed)
    return not failed, timed_out


def _teardown_all(session: Any) -> None:
    try:
        session._setupstate.teardown_exact(None)
    except Exception as e:  # noqa: BLE001 - a fixture's teardown failing after a mutant: not a verdict
        print(f"mutloop: teardown after a mutant failed: {e!r}", file=sys.stderr)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: Any) -> bool:
    """Replace pytest's loop: the clean run with statistics, then every mutant."""
    meta = json.loads(Path(os.environ["MUTLOOP_META"]).read_text())
    out = Path(os.environ["MUTLOOP_OUT"])
    done = set()
    if out.exists():
        done = {json.loads(line)["mutant"] for line in out.read_text().splitlines() if line}
    names = [n for n in meta["exit_code_by_key"] if n not in done]
    signal.signal(signal.SIGALRM, _on_alarm)

    hits: set[str] = set()
    trampoline.record_trampoline_hit = lambda name, caller=None: hits.add(name)  # type: ignore[assignment]
    calls: dict[str, set[str]] = {}
    seconds: dict[str, float] = {}
    items = session.items
    trampoline.set_mutant_under_test("stats")
    for i, item in enumerate(items):
        hits.clear()
        start = time.monotonic()
        passed, _ = _run_item(item, items[i + 1] if i + 1 < len(items) else None, None)
        seconds[item.nodeid] = time.monotonic() - start
        calls[item.nodeid] = set(hits)
        if not passed:
            print(f"mutloop: {item.nodeid} fails without a mutant; stopping", file=sys.stderr)
            session.testsfailed = 1
            return True
    print(
        f"mutloop: clean run of {len(items)} tests in {sum(seconds.values()):.0f} s; "
        f"{len(names)} mutants to test",
        file=sys.stderr,
    )

    by_nodeid = {item.nodeid: item for item in items}
    with out.open("a") as sink:
        for count, name in enumerate(names, 1):
            function = name.partition("__mutmut_")[0]
            chosen = sorted((n for n in calls if function in calls[n]), key=seconds.__getitem__)
            verdict, killer, polluting = "no tests", None, False
            start = time.monotonic()
            if chosen:
                verdict = "survived"
                trampoline.set_mutant_under_test(name)
                for j, nodeid in enumerate(chosen):
                    nxt = by_nodeid[chosen[j + 1]] if j + 1 < len(chosen) else None
                    passed, timed_out = _run_item(by_nodeid[nodeid], nxt, 10 * seconds[nodeid] + 10)
                    if not passed:
                        verdict, killer = ("timeout" if timed_out else "killed"), nodeid
                        break
                trampoline.set_mutant_under_test("")
                _teardown_all(session)
                if killer is not None and verdict == "killed":
                    passed, _ = _run_item(by_nodeid[killer], None, 10 * seconds[killer] + 10)
                    if not passed and count > 1:
                        # an earlier mutant left state behind: test this one again afresh
                        print(
                            f"mutloop: state left behind before {name}; restarting", file=sys.stderr
                        )
                        os._exit(_RESTART)
                    polluting = not passed  # this mutant's own leftovers: killed all the same
            record = {
                "mutant": name,
                "verdict": verdict,
                "test": killer,
                "tests": len(chosen),
                "files": sorted({n.split("::", 1)[0] for n in chosen}),
                "seconds": round(time.monotonic() - start, 2),
            }
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print(f"mutloop: [{count}/{len(names)}] {verdict:8} {name}", file=sys.stderr)
            if verdict == "timeout" or (killer is not None and polluting):
                # a mutant stopped by SIGALRM may still run on the event loop's thread
                os._exit(_RESTART)
    return True


# --------------------------------------------------------------------------------- driver


def _selection(module: str) -> list[str]:
    for line in (HERE / "modules.txt").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == module:
            return parts[1:]
    raise SystemExit(f"inprocess.py: {module} is not in ci/mutation/modules.txt")


def _scratch(module: str, directory: Path) -> None:
    """A copy of the tree (tracked and new files) with mutmut's mutants of ``module``."""
    directory.mkdir(parents=True)
    copy = (
        "git ls-files -z -co --exclude-standard icechunk_dask tests pyproject.toml"
        ' | tar --null -T - -cf - | tar -xf - -C "$0"'
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", copy, str(directory)], cwd=REPO, check=True)
    (directory / "setup.cfg").write_text(
        f"[mutmut]\nsource_paths = icechunk_dask\nonly_mutate =\n    {module}\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    generate = (
        "import os\n"
        "from mutmut.mutation.trampoline import set_mutant_under_test\n"
        "import mutmut.__main__ as m\n"
        "set_mutant_under_test('mutant_generation')\n"
        "os.makedirs('mutants', exist_ok=True)\n"
        "m.copy_src_dir(); m.copy_also_copy_files(); m.setup_source_paths()\n"
        "m.create_mutants(2)\n"
    )
    subprocess.run(
        [sys.executable, "-c", generate], cwd=directory, check=True, stdout=subprocess.DEVNULL
    )


def _confirm(
    records: list[dict[str, Any]], mutants: Path, env: dict[str, str], module: str
) -> None:
    """Test each survivor again in a fresh pytest process (step 4 of the module docstring)."""
    for r in records:
        if r["verdict"] != "survived" or r.get("confirmed"):
            continue
        files = r.get("files") or _selection(module)
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        command += ["-m", "not slow", *files]
        try:
            rc = subprocess.run(
                command,
                cwd=mutants,
                env={**env, "MUTANT_UNDER_TEST": r["mutant"]},
                capture_output=True,
                check=False,
                timeout=1800,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        r["confirmed"] = True
        if rc != 0:
            r["verdict"] = "killed" if rc != -1 else "timeout"
            r["test"] = "(a fresh process)"
        print(f"mutloop: confirmed {r['verdict']:8} {r['mutant']}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="e.g. icechunk_dask/_listing.py")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "icechunk-dask-inprocess",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the scratch copy and the verdicts already written",
    )
    parser.add_argument(
        "--confirm-only",
        action="store_true",
        help="with --resume: only test the survivors already written again, afresh",
    )
    parser.add_argument(
        "--no-confirm", action="store_true", help="leave the survivors unconfirmed (step 4)"
    )
    args = parser.parse_args()
    slug = args.module.replace("/", "_").removesuffix(".py")
    directory = args.workdir / slug
    out = args.workdir / f"{slug}.jsonl"
    if not args.resume:
        subprocess.run(["rm", "-rf", str(directory), str(out)], check=True)
        _scratch(args.module, directory)
    mutants = directory / "mutants"
    (mutants / "_mutloop.py").write_text(Path(__file__).read_text())
    env = {
        **os.environ,
        "MUTLOOP_META": str(mutants / f"{args.module}.meta"),
        "MUTLOOP_OUT": str(out),
        "MUTANT_UNDER_TEST": "",
    }
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-p", "_mutloop", "-p", "no:cacheprovider"]
    command += ["-m", "not slow", "-q", *_selection(args.module)]
    rc = _RESTART
    while rc == _RESTART and not args.confirm_only:  # a new process resumes (see above)
        rc = subprocess.run(command, cwd=mutants, env=env, check=False).returncode
    records = [json.loads(line) for line in out.read_text().splitlines() if line]
    if not args.no_confirm:
        _confirm(records, mutants, env, args.module)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts: dict[str, int] = {}
    for r in records:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    with (args.workdir / f"{slug}.txt").open("w") as report:
        for r in records:
            if r["verdict"] in ("survived", "no tests"):
                shown = subprocess.run(
                    ["mutmut", "show", r["mutant"]],
                    cwd=directory,
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                report.write(f"# {r['verdict']}\n{shown}\n")
    print(
        f"{args.module}: {len(records)} mutants {counts} "
        f"({time.monotonic() - start:.0f} s, pytest exit {rc})"
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
