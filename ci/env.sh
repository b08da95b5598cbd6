# shellcheck shell=bash
# Set up (once) and activate the project's virtual environment at <repo>/.venv.
#
#   source ci/env.sh     # what ci/test.sh and ci/demo.sh do
#   bash ci/env.sh       # just create / refresh the venv
#
# Python: $PYTHON if set, else python3.13 / python3.12 on PATH, else pyenv's 3.12.x / 3.13.x
# (~/.pyenv/versions or `pyenv root`). Needs >= 3.12.
# The venv is reused while its Python still works and its install stamp (a hash of
# pyproject.toml and the repo path, plus the extras installed) covers what is asked for;
# otherwise `pip install -e` runs again. Extras: $ICD_EXTRAS (default "test,s3").
#
# This file is sourced: it never changes the caller's shell options and never calls `exit`
# when sourced (it returns non-zero instead).

_icd_die() {
    echo "ci/env.sh: error: $*" >&2
    return 1
}

# Print the path of a Python >= 3.12 interpreter, or fail.
_icd_find_python() {
    local cand
    local -a cands=()
    local check='import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)'

    if [[ -n "${PYTHON:-}" ]]; then
        if "$PYTHON" -c "$check" >/dev/null 2>&1; then
            command -v "$PYTHON" 2>/dev/null || echo "$PYTHON"
            return 0
        fi
        _icd_die "PYTHON=$PYTHON is not a working Python >= 3.12 (with venv)." \
            "Unset PYTHON or point it at python3.12 / python3.13."
        return 1
    fi

    # On PATH. pyenv shims for inactive versions exist but fail when run, hence the probe below.
    for cand in python3.13 python3.12; do
        command -v "$cand" >/dev/null 2>&1 && cands+=("$cand")
    done
    # pyenv installs, newest patch release of 3.12 first, then 3.13.
    local pyenv_root="${PYENV_ROOT:-${HOME:-/root}/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then
        pyenv_root="$(pyenv root 2>/dev/null || echo "$pyenv_root")"
    fi
    local minor
    for minor in 3.12 3.13; do
        while IFS= read -r cand; do
            [[ -n "$cand" ]] && cands+=("$cand")
        done < <(ls -d "$pyenv_root"/versions/"$minor"*/bin/python 2>/dev/null | sort -rV)
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v
        while IFS= read -r v; do
            cand="$(PYENV_VERSION="$v" pyenv which python 2>/dev/null)" && cands+=("$cand")
        done < <(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])' | sort -V)
    fi

    for cand in "${cands[@]}"; do
        if "$cand" -c "$check" >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    _icd_die "no Python >= 3.12 found (tried \$PYTHON, python3.13/python3.12 on PATH," \
        "$pyenv_root/versions/3.12*|3.13*, pyenv). Install one (e.g. 'pyenv install 3.12')" \
        "or set PYTHON=/path/to/python3.12."
}

# True if the venv's Python exists, runs and is >= 3.12.
_icd_venv_ok() {
    [[ -x "$1/bin/python" ]] &&
        "$1/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null
}

# Normalise an extras list: "s3, test,s3" -> "s3,test".
_icd_norm_extras() {
    tr ', ' '\n\n' <<<"$1" | sed '/^$/d' | sort -u | paste -sd, -
}

# True if the stamp says the venv was installed from this pyproject.toml at this path with at
# least the requested extras.
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
    local venv="$repo/.venv"
    local extras
    extras="$(_icd_norm_extras "${ICD_EXTRAS:-test,s3}")"
    local stamp_file="$venv/.icd-install-stamp"
    local hash
    hash="$( { cat "$repo/pyproject.toml"; echo "repo=$repo"; } | sha256sum | cut -d' ' -f1)" ||
        return 1

    # Fast path: venv present, its Python runs and is >= 3.12, stamp matches.
    if ! { _icd_venv_ok "$venv" && _icd_stamp_covers "$stamp_file" "$hash" "$extras"; }; then
        # Serialise concurrent first runs (e.g. test.sh and demo.sh started together).
        local lock_fd=""
        if command -v flock >/dev/null 2>&1; then
            exec {lock_fd}>"$repo/.venv.lock"
            flock "$lock_fd"
        fi
        local rc=0
        _icd_install "$repo" "$venv" "$extras" "$hash" "$stamp_file" || rc=$?
        if [[ -n "$lock_fd" ]]; then
            exec {lock_fd}>&-
        fi
        ((rc == 0)) || return "$rc"
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
    local repo="$1" venv="$2" extras="$3" hash="$4" stamp_file="$5"
    # Another process may have finished the job while we waited for the lock.
    if _icd_venv_ok "$venv" && _icd_stamp_covers "$stamp_file" "$hash" "$extras"; then
        return 0
    fi
    if _icd_venv_ok "$venv"; then
        # Reinstall into the existing venv; keep the extras it already had.
        local old
        old="$(sed -n 2p "$stamp_file" 2>/dev/null)"
        extras="$(_icd_norm_extras "$extras,$old")"
    else
        local py
        py="$(_icd_find_python)" || return 1
        echo "ci/env.sh: creating $venv with $("$py" -V 2>&1) ($py)" >&2
        rm -rf "$venv"
        "$py" -m venv "$venv" || _icd_die "'$py -m venv $venv' failed" || return 1
        # The pip bundled with older Pythons (23.x) resolves this project's dependency tree
        # about twice as slowly as a current one. Best effort: keep the bundled pip on failure.
        "$venv/bin/python" -m pip install -qq --disable-pip-version-check --upgrade "pip>=25" \
            >/dev/null 2>&1 || echo "ci/env.sh: warning: could not upgrade pip; going on" >&2
    fi
    rm -f "$stamp_file"
    echo "ci/env.sh: installing icechunk-dask[$extras] into .venv (about a minute the first time)" >&2
    local log="$venv/pip-install.log"
    if ! (cd "$repo" && "$venv/bin/python" -m pip install --disable-pip-version-check \
        --progress-bar off -e ".[$extras]") >"$log" 2>&1; then
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
