"""Escape attempts against the real sandbox, under runc and under gVisor (runsc).

Each test runs hostile code in a container built exactly as the pipeline builds
it (containers.guest_spec from a policy) and asserts what happened. Network tests
only ever target addresses on this machine: listeners the test opens itself on
the host's loopback and on the Docker bridge.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.gate import GateViolation, TensorSpec, gate_output
from sandbox.policy.load import load_policy
from sandbox.policy.model import Policy
from sandbox.redteam import escapes
from sandbox.redteam.escapes import AttackBox
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


@pytest.fixture
def box(
    runner: DockerRunner, runtime_image: str, policy: Policy, workspace: JobWorkspace
) -> AttackBox:
    return AttackBox(runner, runtime_image, policy, workspace)


def test_network_has_only_loopback_and_reaches_nothing(box: AttackBox) -> None:
    result, targets = box.network()
    assert result["interfaces"] == ["lo"]
    assert result["routes"] == 0
    assert len(result["connect"]) == len(targets) >= 1
    assert "connected" not in result["connect"]
    assert all(t.accepted == 0 for t in targets)
    assert result["raw"] != "opened"
    assert result["packet"] != "opened"
    assert result["dns"] != "resolved"


def test_no_docker_socket_and_no_host_secrets(box: AttackBox) -> None:
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


def test_filesystem_is_read_only_except_tmp_and_output(box: AttackBox) -> None:
    result = box.json(escapes.FILESYSTEM_PROBE)
    assert result.pop("/tmp/ok") == "written"
    assert result.pop("/output/ok") == "written"
    assert all(v != "written" for v in result.values()), result


def test_no_capabilities_and_setuid_does_not_raise_privileges(box: AttackBox) -> None:
    result = box.json(escapes.PRIVILEGE_PROBE)
    assert result["docker_socket"] == []
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


def test_fork_bomb_hits_the_pids_limit(box: AttackBox) -> None:
    result = box.run(escapes.FORK_BOMB)
    logs = result.logs.decode()
    counts = escapes.fork_counts(logs)
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


def test_memory_bomb_is_killed(box: AttackBox) -> None:
    result = box.run(escapes.MEMORY_BOMB)
    logs = result.logs.decode()
    assert "survived" not in logs
    assert result.status.oom_killed or result.status.exit_code in (137, 1), result.status
    allocated = [int(line.split()[1]) for line in logs.splitlines() if line.startswith("allocated")]
    assert max(allocated, default=0) <= box.policy.limits.memory_mb


def test_disk_fill_stops_at_the_tmpfs_caps(box: AttackBox) -> None:
    result = box.json(escapes.DISK_FILL)
    mb = 1024 * 1024
    assert result["/tmp/fill"][0] <= box.policy.limits.tmp_mb * mb  # type: ignore[index]
    assert result["/output/fill"][0] <= box.policy.limits.output_mb * mb  # type: ignore[index]
    assert result["/dev/shm/fill"][0] <= 64 * mb  # type: ignore[index]
    assert all(v[1] != "no limit" for v in result.values())  # type: ignore[index]


def test_endless_loop_is_killed_at_the_wall_clock_limit(box: AttackBox) -> None:
    limits = box.policy.limits.model_copy(update={"wall_seconds": 5})
    result = box.run(escapes.ENDLESS_LOOP, box.policy.model_copy(update={"limits": limits}))
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
    box: AttackBox, attack: str, tmp_path: Path
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


def test_honest_output_passes_the_gate(box: AttackBox, tmp_path: Path) -> None:
    result = box.run(
        "import numpy as np\nfrom safetensors.numpy import save_file\n"
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors')\n"
    )
    assert result.status.exit_code == 0
    released = gate_output(box.output, EXPECTED, box.policy.gate, tmp_path / "m.safetensors")
    assert released.path.exists()
    assert os.path.getsize(released.path) == released.size
