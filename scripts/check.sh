#!/usr/bin/env bash
# The one check command, for developers and CI: tests, lint, format, types, stubs.
# Assumes scripts/bootstrap.sh has run (scripts/test.sh does both).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=.venv/bin/python
step() { printf '\n== %s ==\n' "$*"; }

step "ruff check"
$PY -m ruff check .
step "ruff format --check"
$PY -m ruff format --check .
step "mypy --strict sandbox/"
$PY -m mypy --strict sandbox
step "generated gRPC stubs are current"
if [ -x scripts/gen_protos.sh ] && compgen -G "proto/sandbox/v1/*.proto" >/dev/null; then
  scripts/gen_protos.sh --check
else
  echo "no .proto files yet: nothing to check"
fi
step "pytest"
# Exit code 5 (no tests collected) is a failure here, like any other non-zero code.
$PY -m pytest "$@"
