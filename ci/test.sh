#!/usr/bin/env bash
# Run the tests: bash ci/test.sh [pytest args...]
#
# Without arguments: the test suite (tests/) and the notebooks (notebooks/, executed with
# nbmake). With arguments, they are passed to pytest instead, e.g.
#   bash ci/test.sh tests/test_session.py -x
#
# Lint (ruff, mypy --strict, docs/api.md up to date) runs first when ICD_LINT=1, and by
# default when CI is set (ICD_LINT=0 turns it off).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lint="${ICD_LINT:-}"
if [[ -z "$lint" ]]; then
    if [[ -n "${CI:-}" ]]; then lint=1; else lint=0; fi
fi
if [[ "$lint" == "1" ]]; then
    export ICD_EXTRAS="${ICD_EXTRAS:-test,s3},dev"
fi
source ci/env.sh

if [[ "$lint" == "1" ]]; then
    echo "+ ruff check icechunk_dask tests bench docs/gen_api.py" >&2
    ruff check icechunk_dask tests bench docs/gen_api.py
    echo "+ ruff format --check icechunk_dask tests bench docs/gen_api.py" >&2
    ruff format --check icechunk_dask tests bench docs/gen_api.py
    echo "+ mypy" >&2
    mypy
    echo "+ python docs/gen_api.py --check" >&2
    python docs/gen_api.py --check
fi

if [[ $# -eq 0 ]]; then
    set -- --nbmake tests notebooks
fi
echo "+ python -m pytest -q $*" >&2
exec python -m pytest -q "$@"
