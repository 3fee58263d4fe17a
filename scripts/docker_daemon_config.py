"""Helpers for scripts/bootstrap.sh that must not depend on the docker CLI's version.

    docker_daemon_config.py merge DAEMON_JSON RUNSC_PATH
        Merge the gVisor runtime (runsc --network=none) into daemon.json, keeping
        every other setting; print "changed" or "same". (The old form without the
        word "merge" still works.)
    docker_daemon_config.py probe [--socket PATH] [--runtime NAME]
        Exit 0 when the engine answers on its unix socket (and, with --runtime,
        lists that runtime), else 1. Talks HTTP to the socket directly, so a docker
        CLI newer than the daemon cannot make a running engine look dead.

Standard library only: runs with the system python3 before the virtualenv exists.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

DEFAULT_SOCKET = "/var/run/docker.sock"


def merge(path: str, runsc: str) -> str:
    file = Path(path)
    text = file.read_text() if file.exists() else ""
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path} is not valid JSON ({error}); fix it by hand") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{path} must hold a JSON object")
    wanted = {"path": runsc, "runtimeArgs": ["--network=none"]}
    runtimes = config.setdefault("runtimes", {})
    if runtimes.get("runsc") == wanted:
        return "same"
    runtimes["runsc"] = wanted
    file.parent.mkdir(parents=True, exist_ok=True)
    mode = file.stat().st_mode & 0o777 if file.exists() else 0o644
    with tempfile.NamedTemporaryFile("w", dir=file.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(json.dumps(config, indent=2) + "\n")
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, file)  # atomic: dockerd never reads half a file
    return "changed"


def _get(sock_path: str, target: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(sock_path)
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def probe(sock_path: str, runtime: str | None) -> bool:
    try:
        status, _ = _get(sock_path, "/_ping")
        if status != 200:
            return False
        if runtime is None:
            return True
        status, body = _get(sock_path, "/info")
        return status == 200 and runtime in json.loads(body).get("Runtimes", {})
    except (OSError, ValueError, IndexError):
        return False


def _socket_from_env() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else DEFAULT_SOCKET


def main(argv: list[str]) -> int:
    if argv and argv[0] == "probe":
        sock_path, runtime = _socket_from_env(), None
        rest = argv[1:]
        while rest:
            flag, value, *rest = rest
            if flag == "--socket":
                sock_path = value
            elif flag == "--runtime":
                runtime = value
            else:
                raise SystemExit(f"unknown option {flag}")
        return 0 if probe(sock_path, runtime) else 1
    if argv and argv[0] == "merge":
        argv = argv[1:]
    if len(argv) != 2:
        raise SystemExit(__doc__)
    print(merge(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
