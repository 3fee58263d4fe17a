#!/usr/bin/env bash
# Installs everything (idempotent) and runs the end-to-end demo on scikit-learn's digits.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/sandbox" demo "$@"
