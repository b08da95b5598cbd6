#!/usr/bin/env bash
# shellcheck disable=SC2317  # the run_* functions are called through step
# Run the tests: bash ci/test.sh [pytest args...]
#
# The suite runs in one or both environments of ci/env.sh:
#   newest  .venv         newest Python (3.13 here), newest releases of every dependency;
#                         the whole suite, slow tests included, and the notebooks (nbmake);
#                         with CI set, Hypothesis's "ci" profile (300 examples, derandomised).
#   lowest  .venv-lowest  Python 3.12 and the floors of pyproject.toml
#                         (ci/constraints-lowest.txt); the suite without the slow tests
#                         (-m "not slow"), Hypothesis's "dev" profile with a fixed seed.
# With arguments, they are passed to pytest instead of the default selection, in each run
# (the lowest run still puts -m "not slow" first, so a -m of yours wins), e.g.
#   bash ci/test.sh tests/test_session.py -x
#   ICD_MATRIX=lowest bash ci/test.sh tests/test_seed.py
#
# Environment:
#   ICD_MATRIX  newest | lowest | both   (default: both when CI is set, else newest)
#   ICD_LINT    1 | 0   ruff, mypy --strict, import-linter, constraints check (default: 1 with CI)
#   ICD_DOCS    1 | 0   mkdocs build --strict (default: 1 with CI)
# Lint and docs run once, in the newest environment. Every selected step runs even when an
# earlier one failed; the summary at the end gives each step's status and time, and the exit
# status is non-zero if any step failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

_flag() { # _flag VALUE: "1" or "0", defaulting to whether CI is set
    if [[ -n "$1" ]]; then echo "$1"; elif [[ -n "${CI:-}" ]]; then echo 1; else echo 0; fi
}
lint="$(_flag "${ICD_LINT:-}")"
docs="$(_flag "${ICD_DOCS:-}")"
matrix="${ICD_MATRIX:-}"
if [[ -z "$matrix" ]]; then
    if [[ -n "${CI:-}" ]]; then matrix=both; else matrix=newest; fi
fi
case "$matrix" in
    newest) envs=(newest) ;;
    lowest) envs=(lowest) ;;
    both) envs=(newest lowest) ;;
    *)
        echo "ci/test.sh: error: ICD_MATRIX=$matrix: expected newest, lowest or both" >&2
        exit 2
        ;;
esac

logs="$(mktemp -d "${TMPDIR:-/tmp}/icd-test.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
color=()
[[ -t 1 ]] && color=(--color=yes)

summary=()
failed=0
rc_last=0
passed_total=0
failed_total=0

# step NAME COMMAND...: run COMMAND in a subshell with errexit on, time it, record the outcome
# in the summary and in $rc_last. Never fails itself: call it as a plain command (in an `if`
# or `||` context bash would turn errexit off inside COMMAND).
step() {
    local name="$1" start
    shift
    echo >&2
    echo "=== ci/test.sh: $name" >&2
    start=$SECONDS
    set +e
    (
        set -e
        "$@"
    )
    rc_last=$?
    set -e
    local took=$((SECONDS - start)) status=ok
    if ((rc_last != 0)); then
        status="FAILED (exit $rc_last)"
        failed=1
    fi
    local detail=""
    if [[ -f "$logs/detail" ]]; then
        detail="$(<"$logs/detail")"
        rm -f "$logs/detail"
    fi
    summary+=("$(printf '%-16s %-14s %3dm%02ds  %s' "$status" "$name" $((took / 60)) \
        $((took % 60)) "$detail")")
}

extras_for() { # the extras an environment needs
    local extras="${ICD_EXTRAS:-test,s3}"
    if [[ "$1" == newest ]]; then
        [[ "$lint" == 1 ]] && extras+=",dev"
        [[ "$docs" == 1 ]] && extras+=",docs"
    fi
    echo "$extras"
}

activate() { # activate ENV: set up (if needed) and activate the environment's venv
    ICD_ENV="$1" ICD_EXTRAS="$(extras_for "$1")" source ci/env.sh
}

setup_env() {
    activate "$1"
    python - >"$logs/detail" <<'EOF'
import platform
from importlib.metadata import version

names = ["zarr", "dask", "distributed", "xarray", "numpy"]
print(f"Python {platform.python_version()}, " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
    cat "$logs/detail" >&2
}

run_lint() { # every linter runs; the step fails if any did
    activate newest
    local -a paths=(icechunk_dask tests bench ci docs/_hooks)
    local rc=0
    lint_one ruff check "${paths[@]}" || rc=1
    lint_one ruff format --check "${paths[@]}" || rc=1
    lint_one mypy || rc=1
    lint_one lint-imports --no-logo || rc=1
    lint_one python ci/check_constraints.py || rc=1
    return "$rc"
}

lint_one() {
    echo "+ $*" >&2
    "$@"
}

run_docs() {
    activate newest
    echo "+ mkdocs build --strict --site-dir $logs/site" >&2
    # NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0, printed on every build.
    NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$logs/site"
}

run_tests() { # run_tests ENV [pytest args...]
    local env="$1"
    shift
    activate "$env"
    local -a args=("$@")
    if [[ "$env" == lowest ]]; then
        # The slow reliability subset and the "ci" Hypothesis profile run once, in newest.
        export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-dev}"
        if ((${#args[@]} == 0)); then
            args=(-m "not slow" --hypothesis-seed=0 tests)
        else
            args=(-m "not slow" --hypothesis-seed=0 "${args[@]}")
        fi
    elif ((${#args[@]} == 0)); then
        args=(--nbmake tests notebooks)
    fi
    echo "+ python -m pytest -q ${args[*]@Q}" >&2
    local rc=0
    python -m pytest -q "${color[@]}" "${args[@]}" 2>&1 | tee "$logs/pytest-$env.log" || rc=$?
    # pytest's closing line, e.g. "===== 812 passed, 2 deselected in 190.12s (0:03:10) ====="
    tail -n 1 "$logs/pytest-$env.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^=+ //; s/ =+$//' \
        >"$logs/detail"
    return "$rc"
}

count() { # count WORD: the number before WORD in the last pytest closing line, or 0
    grep -oE "[0-9]+ $1" <<<"$2" | head -n 1 | cut -d' ' -f1 || true
}

has_newest=0
[[ " ${envs[*]} " == *" newest "* ]] && has_newest=1
if [[ "$lint" == 1 || "$docs" == 1 || "$has_newest" == 1 ]]; then
    step "newest: venv" setup_env newest
    if ((rc_last == 0)); then
        if [[ "$lint" == 1 ]]; then step "lint" run_lint; fi
        if [[ "$docs" == 1 ]]; then step "docs" run_docs; fi
        if [[ "$has_newest" == 1 ]]; then step "newest: tests" run_tests newest "$@"; fi
    fi
fi
if [[ " ${envs[*]} " == *" lowest "* ]]; then
    step "lowest: venv" setup_env lowest
    if ((rc_last == 0)); then step "lowest: tests" run_tests lowest "$@"; fi
fi

echo >&2
echo "=== ci/test.sh: summary (ICD_MATRIX=$matrix, ICD_LINT=$lint, ICD_DOCS=$docs)" >&2
for line in "${summary[@]}"; do
    echo "$line" >&2
done
for env in "${envs[@]}"; do
    if [[ -f "$logs/pytest-$env.log" ]]; then
        last="$(tail -n 1 "$logs/pytest-$env.log")"
        n="$(count passed "$last")"
        passed_total=$((passed_total + ${n:-0}))
        n="$(count failed "$last")"
        failed_total=$((failed_total + ${n:-0}))
        n="$(count error "$last")"
        failed_total=$((failed_total + ${n:-0}))
    fi
done
# One closing line over all test runs (errors counted as failures).
echo "tests: $passed_total passed, $failed_total failed"
exit "$failed"
