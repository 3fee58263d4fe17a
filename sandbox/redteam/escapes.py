"""Isolation escape attempts: hostile code run in a container built exactly as the
pipeline builds one (from a policy), with the evidence of what happened.

Used twice: by the integration tests (tests/integration/test_isolation.py), which
assert the details, and by the red-team scorecard (`sandbox policy test`), which
turns each attempt into an outcome. Network probes only ever target addresses on
this machine: listeners opened here on the loopback and on the Docker bridge.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import textwrap
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from sandbox.pipeline import containers
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount, Runner, RunResult, run_container
from sandbox.runner.workspace import JobWorkspace

NETWORK_PROBE = """
import json, socket
out = {"interfaces": sorted(n for _, n in socket.if_nameindex())}
routes = open("/proc/net/route").read().strip().splitlines()[1:]
out["routes"] = len(routes)
out["connect"] = []
for host, port in TARGETS:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); out["connect"].append("connected")
    except OSError as e:
        out["connect"].append(type(e).__name__)
for name, args in [("raw", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ("packet", (socket.AF_PACKET, socket.SOCK_RAW, 0x0300))]:
    try:
        socket.socket(*args); out[name] = "opened"
    except OSError as e:
        out[name] = type(e).__name__
try:
    socket.getaddrinfo("deb.debian.org", 80); out["dns"] = "resolved"
except OSError as e:
    out["dns"] = type(e).__name__
print(json.dumps(out))
"""

FILESYSTEM_PROBE = """
import json
out = {}
for path in ["/etc/evil", "/usr/evil", "/evil", "/algorithm/evil", "/data/evil",
             "/data/train.npz", "/opt/trusted/sandbox/guest/train.py", "/tmp/ok", "/output/ok"]:
    try:
        with open(path, "ab") as f:
            f.write(b"x")
        out[path] = "written"
    except OSError as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""

PRIVILEGE_PROBE = """
import json, os, subprocess
lines = open("/proc/self/status").read().splitlines()
status = dict(l.split(":\\t", 1) for l in lines if ":\\t" in l)
keys = ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
out = {k: status.get(k, "").strip() for k in keys}
out["uid"] = os.getuid(); out["euid"] = os.geteuid()
try:
    os.setuid(0); out["setuid"] = "became root"
except OSError as e:
    out["setuid"] = type(e).__name__
setuid_bins = [p for p in ("/bin/mount", "/usr/bin/mount", "/bin/su", "/usr/bin/su")
               if os.path.exists(p) and os.stat(p).st_mode & 0o4000]
out["setuid_bins"] = setuid_bins
runs = []
for binary in setuid_bins:
    r = subprocess.run([binary, "-t", "tmpfs", "none", "/tmp"] if "mount" in binary
                       else [binary, "-c", "id -u"], capture_output=True, text=True)
    runs.append([binary, r.returncode, r.stdout.strip()])
out["runs"] = runs
sockets = ("/var/run/docker.sock", "/run/docker.sock")
out["docker_socket"] = [p for p in sockets if os.path.exists(p)]
print(json.dumps(out))
"""

FORK_BOMB = """
import os, time
count = 0
try:
    while count < 10000:
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        count += 1
        print("forked", count, flush=True)
except OSError as e:
    print("stopped", count, type(e).__name__, flush=True)
"""

_FORKED = re.compile(r"^forked (\d+)$", re.M)


def fork_counts(logs: str) -> list[int]:
    """The counts FORK_BOMB printed. Under gVisor the sandbox is torn down at the pids
    limit, which can cut the last line short ("forked" alone): only whole lines count."""
    return [int(count) for count in _FORKED.findall(logs)]


MEMORY_BOMB = """
chunks = []
for i in range(64):
    chunks.append(bytearray(64 * 1024 * 1024))
    print("allocated", (i + 1) * 64, "MB", flush=True)
print("survived")
"""

DISK_FILL = """
import json, os
out = {}
for path in ("/tmp/fill", "/output/fill", "/dev/shm/fill"):
    written = 0
    try:
        with open(path, "wb") as f:
            while written < 512 * 1024 * 1024:
                f.write(b"\\0" * 1048576); f.flush(); written += 1048576
    except OSError as e:
        out[path] = [written, type(e).__name__]
    else:
        out[path] = [written, "no limit"]
    os.remove(path)
print(json.dumps(out))
"""

ENDLESS_LOOP = "while True: pass"


class AttackBox:
    """A job-like container set-up (package, dataset, output) for escape attempts."""

    def __init__(self, runner: Runner, image: str, policy: Policy, ws: JobWorkspace) -> None:
        self.runner, self.image, self.policy, self.ws = runner, image, policy, ws
        self.data = ws.tmpfs("data", 1)
        np.savez(self.data / "train.npz", x=np.ones((4, 2), np.float32), y=np.arange(4))
        self.algorithm = ws.tmpfs("algorithm", 1)
        (self.algorithm / "train.py").write_text("print('hi')\n")
        self.output = ws.output_dir("train", policy.limits.output_mb)

    def run(self, script: str, policy: Policy | None = None) -> RunResult:
        """Run `script` as the provider's code would run: same mounts, limits, runtime."""
        spec = containers.guest_spec(
            policy or self.policy,
            job_id=self.ws.job_id,
            step="attack",
            image=self.image,
            module="train",
            mounts=[
                BindMount(self.algorithm, "/algorithm"),
                BindMount(self.data, "/data"),
                BindMount(self.output, "/output", read_only=False),
            ],
        )
        command = ("python", "-c", textwrap.dedent(script))
        return run_container(self.runner, replace(spec, command=command))

    def json(self, script: str) -> dict[str, Any]:
        """Run a probe that prints one JSON object last; raise if it did not."""
        result = self.run(script)
        text = result.logs.decode(errors="replace").strip()
        if result.status.exit_code != 0 or not text:
            raise RuntimeError(f"probe failed ({result.status}): {text[-500:]}")
        parsed: dict[str, Any] = json.loads(text.splitlines()[-1])
        return parsed

    def network(self) -> tuple[dict[str, Any], list[Listener]]:
        """The network probe against listeners opened here; returns them closed."""
        targets = [Listener("127.0.0.1")]
        bridge = bridge_ip()
        if bridge:
            targets.append(Listener(bridge))
        try:
            addresses = [[t.host, t.port] for t in targets]
            result = self.json(f"TARGETS = {addresses!r}\n" + NETWORK_PROBE)
        finally:
            for target in targets:
                target.close()
        return result, targets


def bridge_ip() -> str | None:
    """The host's address on the Docker bridge, if there is one."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    )
    for word in out.stdout.split():
        if "/" in word and word[0].isdigit():
            return word.split("/")[0]
    return None


class Listener:
    """A TCP listener on this machine that records whether anything connected."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
