#!/usr/bin/env bash
# Installs everything (idempotent) and runs every test and check.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/scripts/check.sh" "$@"
