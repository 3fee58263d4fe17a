#!/usr/bin/env bash
# Installs everything (idempotent) and runs every test and check.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
# The browser tests (pytest -m browser) render the owner's HTML report in headless
# Chromium: Debian's package, installed here only (the demo does not need it).
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium (apt) for the browser tests" >&2
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
exec "$ROOT/scripts/check.sh" "$@"
