#!/usr/bin/env bash
# Run the end-to-end demo: bash ci/demo.sh [demo args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source ci/env.sh

exec python -m icechunk_dask demo "$@"
