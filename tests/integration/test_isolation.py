"""Escape attempts against the real sandbox, under runc and under gVisor (runsc).

Each test runs hostile code in a container built exactly as the pipeline builds
it (containers.guest_spec from a policy) and asserts what happened. Network tests
only ever target addresses on this machine: listeners the test opens itself on
the host's loopback and on the Docker bridge.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sandbox.gate import GateViolation, TensorSpec, gate_output
from sandbox.pipeline import containers
from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount, RunResult, run_container
from sandbox.runner.docker_runner import RUNSC_THREAD_HEADROOM, DockerRunner
from sandbox.runner.workspace import JobWorkspace

pytestmark = pytest.mark.docker
RUNTIMES = ["runc", "runsc"]


@pytest.fixture(scope="module")
def runner(docker_client: object) -> DockerRunner:
    return DockerRunner(docker_client)  # type: ignore[arg-type]


@pytest.fixture(params=RUNTIMES)
def policy(request: pytest.FixtureRequest, runner: DockerRunner) -> Policy:
    runner.check_runtime(request.param)
    base = load_policy("default")
    limits = base.limits.model_copy(
        update={"wall_seconds": 60, "memory_mb": 256, "pids": 32, "tmp_mb": 8, "output_mb": 4}
    )
    return base.model_copy(update={"runtime": request.param, "limits": limits, "name": "iso"})


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[JobWorkspace]:
    with JobWorkspace(tmp_path / "work", "iso-job") as ws:
        yield ws


class Sandbox:
    def __init__(self, runner: DockerRunner, image: str, policy: Policy, ws: JobWorkspace) -> None:
        self.runner, self.image, self.policy, self.ws = runner, image, policy, ws
        self.data = ws.tmpfs("data", 1)
        np.savez(self.data / "train.npz", x=np.ones((4, 2), np.float32), y=np.arange(4))
        self.algorithm = ws.tmpfs("algorithm", 1)
        (self.algorithm / "train.py").write_text("print('hi')\n")
        self.output = ws.output_dir("train", policy.limits.output_mb)

    def run(self, script: str, policy: Policy | None = None) -> RunResult:
        policy = policy or self.policy
        spec = containers.guest_spec(
            policy,
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
        spec = type(spec)(**{**spec.__dict__, "command": ("python", "-c", textwrap.dedent(script))})
        result = run_container(self.runner, spec)
        return result

    def json(self, script: str) -> dict[str, object]:
        result = self.run(script)
        lines = result.logs.decode(errors="replace").strip().splitlines()
        assert result.status.exit_code == 0, result.logs.decode(errors="replace")
        return json.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.fixture
def box(
    runner: DockerRunner, runtime_image: str, policy: Policy, workspace: JobWorkspace
) -> Sandbox:
    return Sandbox(runner, runtime_image, policy, workspace)


def _bridge_ip() -> str | None:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True
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


def test_network_has_only_loopback_and_reaches_nothing(box: Sandbox) -> None:
    targets = [Listener("127.0.0.1")]
    bridge = _bridge_ip()
    if bridge:
        targets.append(Listener(bridge))
    try:
        addresses = [[t.host, t.port] for t in targets]
        result = box.json(
            f"""
            import json, socket
            out = {{"interfaces": sorted(n for _, n in socket.if_nameindex())}}
            routes = open("/proc/net/route").read().strip().splitlines()[1:]
            out["routes"] = len(routes)
            out["connect"] = []
            for host, port in {addresses!r}:
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
        )
    finally:
        for target in targets:
            target.close()
    assert result["interfaces"] == ["lo"]
    assert result["routes"] == 0
    assert "connected" not in result["connect"]  # type: ignore[operator]
    assert all(t.accepted == 0 for t in targets)
    assert result["raw"] != "opened"
    assert result["packet"] != "opened"
    assert result["dns"] != "resolved"


def test_no_docker_socket_and_no_host_secrets(box: Sandbox) -> None:
    result = box.json(
        """
        import json, os
        print(json.dumps({
            "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
            "env": sorted(os.environ),
        }))
        """
    )
    assert result["sockets"] == []
    assert not any(k.startswith(("AWS", "DOCKER", "SSH")) for k in result["env"])  # type: ignore[union-attr]


def test_filesystem_is_read_only_except_tmp_and_output(box: Sandbox) -> None:
    result = box.json(
        """
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
    )
    assert result.pop("/tmp/ok") == "written"
    assert result.pop("/output/ok") == "written"
    assert all(v != "written" for v in result.values()), result


def test_no_capabilities_and_setuid_does_not_raise_privileges(box: Sandbox) -> None:
    result = box.json(
        """
        import json, os, subprocess
        status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
        out = {k: status.get(k, "").strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
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
        print(json.dumps(out))
        """
    )
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(result[key], 16) == 0, (key, result[key])  # type: ignore[arg-type]
    assert result["uid"] == result["euid"] == 65534
    assert result["setuid"] == "PermissionError"
    for binary, code, stdout in result["runs"]:  # type: ignore[union-attr]
        assert code != 0 and stdout != "0", binary
    if box.policy.runtime == "runc":
        # gVisor reports neither field: its Sentry is the boundary there, itself
        # running under gVisor's own host seccomp filter.
        assert int(result["CapAmb"], 16) == 0  # type: ignore[arg-type]
        assert result["NoNewPrivs"] == "1"
        assert result["Seccomp"] == "2"  # Docker's default filter is on


def test_fork_bomb_hits_the_pids_limit(box: Sandbox) -> None:
    result = box.run(
        """
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
    )
    logs = result.logs.decode()
    counts = [int(line.split()[1]) for line in logs.splitlines() if line.startswith("forked")]
    limit = box.policy.limits.pids
    if box.policy.runtime == "runc":
        assert "stopped" in logs, logs[-500:]  # fork() failed with EAGAIN at the limit
    else:
        # Under gVisor the Sentry's threads share the cgroup: at the limit the whole
        # sandbox is torn down, which contains the bomb just as well.
        assert "stopped" in logs or not result.status.ok, logs[-500:]
        limit += RUNSC_THREAD_HEADROOM
    assert 0 < max(counts) < limit
    assert result.status.duration_s < 50


def test_memory_bomb_is_killed(box: Sandbox) -> None:
    result = box.run(
        """
        chunks = []
        for i in range(64):
            chunks.append(bytearray(64 * 1024 * 1024))
            print("allocated", (i + 1) * 64, "MB", flush=True)
        print("survived")
        """
    )
    logs = result.logs.decode()
    assert "survived" not in logs
    assert result.status.oom_killed or result.status.exit_code in (137, 1), result.status
    allocated = [int(line.split()[1]) for line in logs.splitlines() if line.startswith("allocated")]
    assert max(allocated, default=0) <= box.policy.limits.memory_mb


def test_disk_fill_stops_at_the_tmpfs_caps(box: Sandbox) -> None:
    result = box.json(
        """
        import json
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
            import os; os.remove(path)
        print(json.dumps(out))
        """
    )
    mb = 1024 * 1024
    assert result["/tmp/fill"][0] <= box.policy.limits.tmp_mb * mb  # type: ignore[index]
    assert result["/output/fill"][0] <= box.policy.limits.output_mb * mb  # type: ignore[index]
    assert result["/dev/shm/fill"][0] <= 64 * mb  # type: ignore[index]
    assert all(v[1] != "no limit" for v in result.values())  # type: ignore[index]


def test_endless_loop_is_killed_at_the_wall_clock_limit(box: Sandbox) -> None:
    limits = box.policy.limits.model_copy(update={"wall_seconds": 5})
    result = box.run("while True: pass", box.policy.model_copy(update={"limits": limits}))
    assert result.status.timed_out
    assert result.status.exit_code is None
    assert 5 <= result.status.duration_s < 40


# --- output smuggling: the container writes, the real gate judges -----------------------

EXPECTED = {"w": TensorSpec("F32", (4, 4)), "b": TensorSpec("F32", (4,))}
SMUGGLING = {
    "extra file": ("open('/output/notes.txt', 'w').write('secret')", "notes.txt"),
    "symlink to the dataset": (
        "import os; os.remove('/output/model.safetensors'); "
        "os.symlink('/data/train.npz', '/output/model.safetensors')",
        "symbolic link",
    ),
    "pickle named model.safetensors": (
        "import pickle; open('/output/model.safetensors', 'wb').write(pickle.dumps({'w': 1}))",
        "pickle",
    ),
    "extra tensor": (
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32), "
        "'data': np.ones(100, np.float32)}, '/output/model.safetensors')",
        "data",
    ),
    "__metadata__": (
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors', metadata={'secret': 'x' * 100})",
        "__metadata__",
    ),
    "wrong shape": (
        "save_file({'w': np.ones((4, 5), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors')",
        "shape",
    ),
    "NaN payload": (
        "w = np.ones((4, 4), np.float32); w.view(np.uint32)[0, :] = 0x7FC0BEEF; "
        "save_file({'w': w, 'b': np.ones(4, np.float32)}, '/output/model.safetensors')",
        "NaN",
    ),
    "oversized file": (
        "open('/output/model.safetensors', 'ab').write(b'\\0' * (3 * 1024 * 1024))",
        "",
    ),
    "hidden subdirectory": ("import os; os.mkdir('/output/.x')", ".x"),
}


@pytest.mark.parametrize("attack", sorted(SMUGGLING))
def test_output_smuggling_is_rejected_by_the_gate(
    box: Sandbox, attack: str, tmp_path: Path
) -> None:
    code, reason = SMUGGLING[attack]
    script = (
        "import numpy as np\nfrom safetensors.numpy import save_file\n"
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors')\n" + code + "\n"
    )
    result = box.run(script)
    assert result.status.exit_code == 0, result.logs.decode()
    rules = box.policy.gate.model_copy(update={"max_model_mb": 2})
    with pytest.raises(GateViolation) as caught:
        gate_output(box.output, EXPECTED, rules, tmp_path / "released.safetensors")
    assert reason.lower() in caught.value.message.lower(), caught.value.message
    assert not (tmp_path / "released.safetensors").exists()


def test_honest_output_passes_the_gate(box: Sandbox, tmp_path: Path) -> None:
    result = box.run(
        "import numpy as np\nfrom safetensors.numpy import save_file\n"
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors')\n"
    )
    assert result.status.exit_code == 0
    released = gate_output(box.output, EXPECTED, box.policy.gate, tmp_path / "m.safetensors")
    assert released.path.exists()
    assert os.path.getsize(released.path) == released.size
