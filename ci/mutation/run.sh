#!/usr/bin/env bash
# Mutation testing of the core with mutmut 3 (issue 13). Not part of the default CI run.
# ci/mutation/inprocess.py tests the same mutants in one pytest process (much faster).
#
#   bash ci/mutation/run.sh                                  # every module of modules.txt
#   bash ci/mutation/run.sh icechunk_dask/_changeset.py ...  # just these
#
# For each module, in a scratch copy of the working tree (tracked and new files, not .venv):
# mutmut makes every mutant of the module's functions, runs the module's fast test selection
# once to learn which tests call which function, then runs, for each mutant, only the tests
# that call the mutated function, stopping at the first failure (-x). A mutant is "killed"
# when a test fails (or it times out), "survived" when they all pass. The selections live in
# ci/mutation/modules.txt (no slow tests, no Hypothesis state machines).
#
# Environment:
#   MUTATION_BUDGET   seconds per module before the run stops (default 1800); a stopped run
#                     reports what it checked so far and resumes with MUTATION_RESUME=1
#   MUTATION_JOBS     mutants tested in parallel (default: number of CPUs)
#   MUTATION_WORKDIR  scratch folder (default ${TMPDIR:-/tmp}/icechunk-dask-mutation)
#   MUTATION_TIMEOUT  mutmut's timeout_multiplier (default 15, mutmut's own): a mutant is
#                     stopped after this many times the normal time of its tests plus 20
#                     seconds (wall clock; the 20 s, mutmut's timeout_constant, cover a
#                     worker's start: importing zarr and collecting its tests, slow on a busy
#                     machine); a mutant that hangs costs that long
#   MUTATION_RESUME   1 = keep the scratch copy and mutmut's results of an earlier run (mutants
#                     whose worker failed, exit code 255, are tested again)
#   MUTATION_RECHECK  1 = with MUTATION_RESUME=1: test the survivors (and the mutants without
#                     tests) of the earlier run again, with the tests as they are now (mutmut
#                     keeps every verdict it has; new tests only get their statistics taken)
#
# Output: per module a summary (killed / survived / timeout / no tests, kill ratio, time)
# and the diff of every survivor, in $MUTATION_WORKDIR/<module>.txt; a table of all modules
# in $MUTATION_WORKDIR/summary.md. Record the verdict for each survivor (a test that kills
# it, or why it is equivalent) in docs/reliability.md, "Mutation testing".
#
# Notes: mutmut 3 mutates code inside functions only (not module-level constants). The
# workers are forked from a fork server that never ran a test (process_isolation =
# forkserver): forking the main process after the stats run copies zarr's and asyncio's
# event-loop threads' state without the threads, and every mutant then hangs until timeout.
# mutmut's default warm-up (the fork server collects the selection before forking) is not
# used: pytest 9 keeps the ids it generated on each parametrize mark and, when a worker forked
# from it runs pytest again, escapes them a second time, so a non-ASCII parameter ('naïve' ->
# 'na\\xefve') gets an id that differs from the one in mutmut's statistics; pytest refuses the
# test list (exit 4), the worker dies with exit code 255 and mutmut files the mutant as
# "timeout" without having run a test. (Turning id escaping off instead makes pytest fail on
# bytes parameters.) The fork server only imports libraries that are no pytest plugins (zarr
# and hypothesis are: pytest could not rewrite their asserts, a warning, so an error here). A
# resumed run tests mutants with exit code 255 again; the report warns about any left.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo="$(pwd -P)"
MUTMUT_VERSION="3.8.1"

source ci/env.sh
if ! python -c "import mutmut, sys; sys.exit(mutmut.__version__ != '$MUTMUT_VERSION')" 2>/dev/null
then
    python -m pip install -q "mutmut==$MUTMUT_VERSION"
fi

budget="${MUTATION_BUDGET:-1800}"
jobs="${MUTATION_JOBS:-$(nproc)}"
work="${MUTATION_WORKDIR:-${TMPDIR:-/tmp}/icechunk-dask-mutation}"
mkdir -p "$work"

# module -> test files, from modules.txt
declare -A tests_of=()
declare -a order=()
while read -r module rest; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    tests_of["$module"]="$rest"
    order+=("$module")
done <ci/mutation/modules.txt
if [[ $# -gt 0 ]]; then
    order=("$@")
fi

summary="$work/summary.md"
{
    echo "| module | mutants | killed | timeout | survived | no tests | not checked | kill ratio | seconds |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >"$summary"

for module in "${order[@]}"; do
    selection="${tests_of[$module]:-}"
    if [[ -z "$selection" ]]; then
        echo "run.sh: $module is not in ci/mutation/modules.txt" >&2
        exit 2
    fi
    slug="${module//\//_}"
    dir="$work/${slug%.py}"
    if [[ "${MUTATION_RESUME:-0}" != "1" ]]; then
        rm -rf "$dir"
    fi
    mkdir -p "$dir"
    # the working tree as it is, tracked and untracked files (not ignored ones)
    git ls-files -z -co --exclude-standard icechunk_dask tests pyproject.toml |
        tar --null -T - -cf - | tar -xf - -C "$dir"
    {
        echo "[mutmut]"
        echo "source_paths = icechunk_dask"
        echo "only_mutate ="
        echo "    $module"
        echo "process_isolation = forkserver"
        echo "timeout_multiplier = ${MUTATION_TIMEOUT:-15}"
        echo "timeout_constant = 20"
        echo "pytest_add_cli_args ="
        printf '    %s\n' -p no:cacheprovider -m "not slow" -x
        echo "forkserver_warmup = import"
        echo "preload_modules_file = preload.txt"
        echo "pytest_add_cli_args_test_selection ="
        for t in $selection; do echo "    $t"; done
    } >"$dir/setup.cfg"
    printf '%s\n' numpy numcodecs dask dask.array distributed xarray >"$dir/preload.txt"
    [[ -d "$dir/.git" ]] || git -C "$dir" init -q  # mutmut's change detection wants a repository
    meta="$dir/mutants/$module.meta"
    if [[ "${MUTATION_RESUME:-0}" == "1" && -f "$meta" ]]; then
        python - "$meta" "${MUTATION_RECHECK:-0}" <<'PY'
import json, sys
path, recheck = sys.argv[1], sys.argv[2] == "1"
meta = json.load(open(path))
codes = meta["exit_code_by_key"]
redo = (0, 5, 33, 255) if recheck else (255,)  # survived, no tests; worker error (see above)
again = [k for k, v in codes.items() if v in redo]
for k in again:
    codes[k] = None
json.dump(meta, open(path, "w"))
print(f"run.sh: {len(again)} mutants to check again", file=sys.stderr)
PY
    fi

    echo "== $module: mutmut run (budget ${budget}s, $jobs jobs; tests: $selection)" >&2
    start=$SECONDS
    rc=0
    (cd "$dir" && timeout --signal=INT --kill-after=60 "$budget" \
        mutmut run --max-children "$jobs" >"$dir/run.log" 2>&1) || rc=$?
    seconds=$((SECONDS - start))
    if [[ $rc -ne 0 ]]; then
        echo "   mutmut stopped with exit code $rc after ${seconds}s (124/130: budget reached);" \
            "partial results; log: $dir/run.log" >&2
    fi
    (cd "$dir" && mutmut export-cicd-stats >/dev/null 2>&1) || true
    report="$work/${slug%.py}.txt"
    (cd "$dir" && python - "$module" "$seconds" <<'PY'
import json, subprocess, sys
module, seconds = sys.argv[1], int(sys.argv[2])
s = json.load(open("mutants/mutmut-cicd-stats.json"))
lines = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True).stdout
status = dict(l.strip().rsplit(": ", 1) for l in lines.splitlines() if ": " in l)
not_checked = sum(v == "not checked" for v in status.values())
detected = s["killed"] + s["timeout"] + s["segfault"]
judged = detected + s["survived"] + s["suspicious"]
ratio = f"{100 * detected / judged:.1f} %" if judged else "-"
codes = json.load(open(f"mutants/{module}.meta"))["exit_code_by_key"]
errors = sum(v == 255 for v in codes.values())
if errors:
    print(f"run.sh: WARNING: {errors} mutants of {module} ended with exit code 255 (mutmut's "
          "worker could not run pytest), filed as timeouts but never tested", file=sys.stderr)
print(f"| `{module}` | {s['total']} | {s['killed']} | {s['timeout']} | {s['survived']} "
      f"| {s['no_tests']} | {not_checked} | {ratio} | {seconds} |")
with open("survivors.txt", "w") as out:
    for name, st in sorted(status.items()):
        if st in ("survived", "no tests", "suspicious"):
            shown = subprocess.run(["mutmut", "show", name], capture_output=True, text=True)
            out.write(shown.stdout + "\n")
PY
    ) >>"$summary"
    { tail -n 1 "$summary"; echo; cat "$dir/survivors.txt"; } >"$report"
    echo "   $(tail -n 1 "$summary")" >&2
    echo "   survivors: $report" >&2
done
echo "summary: $summary" >&2
cat "$summary"
