#!/usr/bin/env bash
# Run the test suite: bash ci/test.sh [pytest args...]
#   ICD_LINT=1 bash ci/test.sh    also runs ruff and mypy first (installs the dev extra)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${ICD_LINT:-0}" == "1" ]]; then
    export ICD_EXTRAS="${ICD_EXTRAS:-test,s3},dev"
fi
source ci/env.sh

if [[ "${ICD_LINT:-0}" == "1" ]]; then
    echo "+ ruff check icechunk_dask tests" >&2
    ruff check icechunk_dask tests
    echo "+ mypy" >&2
    mypy
fi

echo "+ python -m pytest -q $*" >&2
exec python -m pytest -q "$@"
