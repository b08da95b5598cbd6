# shellcheck shell=bash
# Set up (once) and activate one of the project's two virtual environments.
#
#   source ci/env.sh                    # the newest venv, <repo>/.venv (what ci/demo.sh uses)
#   ICD_ENV=lowest source ci/env.sh     # the lowest venv, <repo>/.venv-lowest
#   bash ci/env.sh                      # just create / refresh the venv
#
# The two environments (ci/test.sh runs the suite in each):
#   newest  .venv         the newest Python >= 3.12 found (3.13 here) and the newest releases of
#                         every dependency: `pip install --upgrade --upgrade-strategy eager`.
#   lowest  .venv-lowest  the oldest supported Python (the floor of `requires-python`, 3.12)
#                         and the lowest supported versions: the floors in pyproject.toml,
#                         pinned in ci/constraints-lowest.txt (the same pip command with
#                         `--constraint`: what is not pinned there is at its newest release).
#
# Python, when a venv is created: $PYTHON (newest) or $PYTHON_LOWEST (lowest) if set, else
# python3.X on PATH, else pyenv's installs (~/.pyenv/versions or `pyenv root`).
# A venv is reused while its Python still works (for lowest: is still the floor version) and
# its install stamp (a hash of pyproject.toml, the repo path, the environment's name and, for
# lowest, the constraints file, plus the extras installed) covers what is asked for; otherwise
# `pip install -e` runs again. ICD_REFRESH=1 forces that reinstall (for newest: picks up the
# releases published since). Extras: $ICD_EXTRAS (default "test,s3").
#
# This file is sourced: it never changes the caller's shell options and never calls `exit`
# when sourced (it returns non-zero instead).

_icd_die() {
    echo "ci/env.sh: error: $*" >&2
    return 1
}

# The floor of requires-python in pyproject.toml, e.g. "3.12".
_icd_python_floor() {
    sed -n 's/^requires-python *= *">= *\([0-9]*\.[0-9]*\)".*/\1/p' "$1/pyproject.toml"
}

# Print the path of a Python interpreter, or fail.
#   $1 = "newest": any Python >= floor, the highest minor version first;
#   $1 = "lowest": exactly the floor's minor version.
#   $2 = the floor ("3.12"); $3 = the override from the environment ($PYTHON...), may be empty.
_icd_find_python() {
    local which="$1" floor="$2" override="$3" cand minor
    local -a cands=() minors=()
    local fmaj="${floor%%.*}" fmin="${floor#*.}"
    local check
    if [[ "$which" == lowest ]]; then
        check="import sys, venv; sys.exit(sys.version_info[:2] != ($fmaj, $fmin))"
    else
        check="import sys, venv; sys.exit(sys.version_info < ($fmaj, $fmin))"
    fi
    local want="Python $floor"
    [[ "$which" == lowest ]] || want="Python >= $floor"

    if [[ -n "$override" ]]; then
        if "$override" -c "$check" >/dev/null 2>&1; then
            command -v "$override" 2>/dev/null || echo "$override"
            return 0
        fi
        _icd_die "the interpreter '$override' set for the $which environment is not a" \
            "working $want (with venv). Unset it or point it at a $want."
        return 1
    fi

    # Minor versions to try, in order of preference.
    if [[ "$which" == lowest ]]; then
        minors=("$floor")
    else
        for ((minor = fmin + 4; minor >= fmin; minor--)); do minors+=("$fmaj.$minor"); done
    fi
    local pyenv_root="${PYENV_ROOT:-${HOME:-/root}/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then
        pyenv_root="$(pyenv root 2>/dev/null || echo "$pyenv_root")"
    fi
    for minor in "${minors[@]}"; do
        # On PATH. pyenv shims for inactive versions exist but fail when run: the probe below
        # skips them.
        command -v "python$minor" >/dev/null 2>&1 && cands+=("python$minor")
        # pyenv installs, newest patch release first.
        while IFS= read -r cand; do
            [[ -n "$cand" ]] && cands+=("$cand")
        done < <(ls -d "$pyenv_root"/versions/"$minor".*/bin/python 2>/dev/null | sort -rV)
    done

    for cand in "${cands[@]}"; do
        if "$cand" -c "$check" >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    local var=PYTHON
    [[ "$which" == lowest ]] && var=PYTHON_LOWEST
    _icd_die "no $want found for the $which environment (tried python${minors[0]}... on" \
        "PATH and $pyenv_root/versions). Install one (e.g. 'pyenv install $floor')" \
        "or set $var=/path/to/python$floor."
}

# True if the venv's Python exists, runs and is the right version ($2: "newest" or "lowest",
# $3: the floor).
_icd_venv_ok() {
    local fmaj="${3%%.*}" fmin="${3#*.}" cmp="<"
    [[ "$2" == lowest ]] && cmp="!="
    [[ -x "$1/bin/python" ]] &&
        "$1/bin/python" -c "import sys; sys.exit(sys.version_info[:2] $cmp ($fmaj, $fmin))" \
            2>/dev/null
}

# Normalise an extras list: "s3, test,s3" -> "s3,test".
_icd_norm_extras() {
    tr ', ' '\n\n' <<<"$1" | sed '/^$/d' | sort -u | paste -sd, -
}

# True if the stamp says the venv was installed from these inputs with at least the requested
# extras.
_icd_stamp_covers() {
    local stamp_file="$1" hash="$2" extras="$3" line1="" line2="" e
    { IFS= read -r line1 && IFS= read -r line2; } <"$stamp_file" 2>/dev/null || return 1
    [[ "$line1" == "$hash" ]] || return 1
    for e in ${extras//,/ }; do
        [[ ",$line2," == *",$e,"* ]] || return 1
    done
}

_icd_setup() {
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" || return 1
    local which="${ICD_ENV:-newest}" venv constraints="" override
    case "$which" in
        newest)
            venv="$repo/.venv"
            override="${PYTHON:-}"
            ;;
        lowest)
            venv="$repo/.venv-lowest"
            constraints="$repo/ci/constraints-lowest.txt"
            override="${PYTHON_LOWEST:-}"
            [[ -f "$constraints" ]] || _icd_die "missing $constraints" || return 1
            ;;
        *)
            _icd_die "ICD_ENV=$which: expected 'newest' or 'lowest'"
            return 1
            ;;
    esac
    local floor
    floor="$(_icd_python_floor "$repo")"
    [[ -n "$floor" ]] || _icd_die "no requires-python = \">=X.Y\" in pyproject.toml" || return 1
    local extras
    extras="$(_icd_norm_extras "${ICD_EXTRAS:-test,s3}")"
    local stamp_file="$venv/.icd-install-stamp"
    local hash
    hash="$( {
        cat "$repo/pyproject.toml"
        echo "repo=$repo env=$which"
        [[ -z "$constraints" ]] || cat "$constraints"
    } | sha256sum | cut -d' ' -f1)" || return 1

    # Fast path: venv present, its Python runs and is the right version, stamp matches.
    if [[ "${ICD_REFRESH:-0}" == 1 ]] ||
        ! { _icd_venv_ok "$venv" "$which" "$floor" &&
            _icd_stamp_covers "$stamp_file" "$hash" "$extras"; }; then
        # Serialise concurrent first runs (e.g. test.sh and demo.sh started together).
        local lock_fd=""
        if command -v flock >/dev/null 2>&1; then
            exec {lock_fd}>"$venv.lock"
            flock "$lock_fd"
        fi
        local rc=0
        _icd_install "$repo" "$venv" "$which" "$floor" "$override" "$constraints" "$extras" \
            "$hash" "$stamp_file" || rc=$?
        if [[ -n "$lock_fd" ]]; then
            exec {lock_fd}>&-
        fi
        ((rc == 0)) || return "$rc"
    fi

    # Leave a previously activated venv (e.g. the other environment) off PATH.
    if [[ -n "${VIRTUAL_ENV:-}" && "$VIRTUAL_ENV" != "$venv" ]]; then
        PATH=":$PATH:"
        PATH="${PATH//:$VIRTUAL_ENV\/bin:/:}"
        PATH="${PATH#:}"
        PATH="${PATH%:}"
    fi
    export VIRTUAL_ENV="$venv"
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    unset PYTHONHOME
    export PIP_DISABLE_PIP_VERSION_CHECK=1
}

_icd_install() {
    local repo="$1" venv="$2" which="$3" floor="$4" override="$5" constraints="$6" extras="$7"
    local hash="$8" stamp_file="$9"
    local name="${venv##*/}"
    # Another process may have finished the job while we waited for the lock.
    if [[ "${ICD_REFRESH:-0}" != 1 ]] && _icd_venv_ok "$venv" "$which" "$floor" &&
        _icd_stamp_covers "$stamp_file" "$hash" "$extras"; then
        return 0
    fi
    if _icd_venv_ok "$venv" "$which" "$floor"; then
        # Reinstall into the existing venv; keep the extras it already had.
        local old
        old="$(sed -n 2p "$stamp_file" 2>/dev/null)"
        extras="$(_icd_norm_extras "$extras,$old")"
    else
        local py
        py="$(_icd_find_python "$which" "$floor" "$override")" || return 1
        echo "ci/env.sh: creating $name ($which) with $("$py" -V 2>&1) ($py)" >&2
        rm -rf "$venv"
        "$py" -m venv "$venv" || _icd_die "'$py -m venv $venv' failed" || return 1
        # The pip bundled with older Pythons (23.x) resolves this project's dependency tree
        # about twice as slowly as a current one. Best effort: keep the bundled pip on failure.
        "$venv/bin/python" -m pip install -qq --disable-pip-version-check --upgrade "pip>=25" \
            >/dev/null 2>&1 || echo "ci/env.sh: warning: could not upgrade pip; going on" >&2
    fi
    rm -f "$stamp_file"
    # A fresh resolve, also when the venv exists: every package at its newest release that the
    # constraints (lowest: the floors of pyproject.toml, pinned) allow.
    local -a how=(--upgrade --upgrade-strategy eager)
    [[ -z "$constraints" ]] || how+=(--constraint "$constraints")
    echo "ci/env.sh: installing icechunk-dask[$extras] into $name, $which versions" \
        "(about a minute the first time)" >&2
    local log="$venv/pip-install.log"
    if ! (cd "$repo" && "$venv/bin/python" -m pip install --disable-pip-version-check \
        --progress-bar off "${how[@]}" -e ".[$extras]") >"$log" 2>&1; then
        # Show what went wrong, without the noise of index locations pip could not use.
        grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 40 >&2
        _icd_die "pip install failed; full log: $log" || return 1
    fi
    printf '%s\n%s\n' "$hash" "$extras" >"$stamp_file"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Executed, not sourced: set up and report.
    _icd_setup || exit 1
    echo "ci/env.sh: ready: $(python -V 2>&1) at $VIRTUAL_ENV" >&2
else
    _icd_setup
fi
