#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian machine, idempotently:
# the Docker engine (docker.io) and gVisor (runsc), a running dockerd with runsc
# registered, the virtualenv, and the sandbox images. A second run takes seconds.
#
# Environment: PYTHON (interpreter for .venv, default python3.11),
# SANDBOX_DEBIAN_MIRROR (for debootstrap), DOCKER_HOST (unix:// socket only).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
started_ns=$(date +%s%N)
log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

DOCKERD_LOG=/var/log/sandbox-dockerd.log
DOCKERD_PIDFILE=/var/run/docker.pid
HELPER="$ROOT/scripts/docker_daemon_config.py"

# 1. Debian packages (apt only when one is missing).
missing=()
for pkg in docker.io runsc debootstrap iptables python3 python3-venv ca-certificates; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The engine is probed over its socket with the system python3, not with
# `docker info`: a docker CLI newer than the daemon (here /usr/local/bin/docker 28
# against dockerd 20.10) must not make a running engine look dead.
engine_up() { as_root python3 "$HELPER" probe "$@"; }
dockerd_pid() {
  local pid=""
  [ -r "$DOCKERD_PIDFILE" ] && pid=$(as_root cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null; then echo "$pid"; return; fi
  for dir in /proc/[0-9]*; do  # no pidfile: look for a process named dockerd
    [ "$(cat "$dir/comm" 2>/dev/null)" = dockerd ] && { echo "${dir#/proc/}"; return; }
  done
  return 0
}

# 2. Register gVisor with Docker (merged into any existing daemon.json).
RUNSC=$(command -v runsc || true)
[ -n "$RUNSC" ] || die "runsc is not on PATH after installing it"
changed=$(as_root python3 "$HELPER" merge /etc/docker/daemon.json "$RUNSC")

# 3. A running dockerd (no systemd needed) that knows the runsc runtime.
if ! engine_up; then
  pid=$(dockerd_pid)
  if [ -z "$pid" ]; then
    log "starting dockerd (log: $DOCKERD_LOG)"
    as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
    pid=$(as_root sh -c 'setsid nohup dockerd >>"$1" 2>&1 </dev/null & echo $!' sh "$DOCKERD_LOG")
  else
    log "dockerd (pid $pid) is running but not answering yet; waiting"
  fi
  for _ in $(seq 1 60); do
    engine_up && break
    as_root kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if ! engine_up; then
    log "the engine did not answer within 60 s (socket: ${DOCKER_HOST:-unix:///var/run/docker.sock}); the end of $DOCKERD_LOG:"
    as_root tail -n 25 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi
if [ "$changed" = "changed" ] || ! engine_up --runtime runsc; then
  pid=$(dockerd_pid)
  [ -n "$pid" ] || die "cannot find dockerd's pid to reload it; restart dockerd by hand"
  log "reloading dockerd (pid $pid) to pick up the runsc runtime"
  as_root kill -HUP "$pid"
  for _ in $(seq 1 20); do engine_up --runtime runsc && break; sleep 0.5; done
  engine_up --runtime runsc || die "dockerd does not list the runsc runtime after a reload; restart it"
fi

# 4. The virtualenv (reinstalled only when pyproject.toml or constraints.txt changes;
# constraints.txt pins every package to the versions the project was tested with).
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ ! -x .venv/bin/python ]; then
  log "installing the project into the virtualenv (.venv)"
  if [ ! -x .venv/bin/python ]; then
    PY=${PYTHON:-python3.11}
    command -v "$PY" >/dev/null || PY=python3
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
      die "$PY is not Python 3.11 (set PYTHON=/path/to/python3.11)"
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# 5. The sandbox images (content-tagged: skipped when nothing changed; the base
# image needs root for debootstrap).
tag=$(as_root .venv/bin/python -m sandbox.runner.images build)
log "runtime image: $tag"
elapsed_ms=$(( ($(date +%s%N) - started_ns) / 1000000 ))
log "ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000))) s"
