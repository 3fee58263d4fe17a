"""The hardening of every container, checked on the options we hand to Docker."""

from pathlib import Path

import pytest

from sandbox.pipeline import containers
from sandbox.policy.load import load_policy
from sandbox.runner.base import BindMount, ContainerSpec, Resources
from sandbox.runner.docker_runner import container_options

RES = Resources(
    cpus=1.5, memory_mb=512, pids=64, wall_seconds=30, tmp_mb=32, nofile=128, fsize_mb=16, log_kb=64
)


def spec(**kw: object) -> ContainerSpec:
    base: dict[str, object] = {
        "job_id": "job1",
        "step": "train",
        "image": "img:1",
        "command": ("python", "-m", "x"),
        "resources": RES,
        "mounts": (
            BindMount(Path("/srv/data"), "/data"),
            BindMount(Path("/srv/out"), "/output", read_only=False),
        ),
        "env": {"A": "1"},
    }
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def test_isolation_settings() -> None:
    opts = container_options(spec())
    assert opts["network_mode"] == "none"
    assert opts["read_only"] is True
    assert opts["cap_drop"] == ["ALL"]
    assert "cap_add" not in opts
    assert opts["privileged"] is False
    assert "no-new-privileges:true" in opts["security_opt"]
    assert not any("unconfined" in s for s in opts["security_opt"])
    assert opts["user"] == "65534:65534"
    assert opts["ipc_mode"] == "private"
    for namespace in ("pid_mode", "uts_mode", "userns_mode", "network"):
        assert namespace not in opts  # never shared with the host
    assert opts["runtime"] == "runc"


def test_resource_limits() -> None:
    opts = container_options(spec())
    assert opts["pids_limit"] == 64
    assert opts["mem_limit"] == opts["memswap_limit"] == 512 * 1024 * 1024
    assert opts["nano_cpus"] == 1_500_000_000
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in opts["ulimits"]}
    assert ulimits == {
        "nofile": (128, 128),
        "fsize": (16 * 1024 * 1024,) * 2,
        "core": (0, 0),
    }
    assert opts["tmpfs"] == {"/tmp": "rw,nosuid,nodev,noexec,size=32m,mode=1777"}
    assert opts["log_config"]["Config"] == {"max-size": "64k", "max-file": "1"}


def test_mounts_environment_and_labels() -> None:
    opts = container_options(spec())
    mounts = {m["Target"]: m for m in opts["mounts"]}
    assert mounts["/data"]["ReadOnly"] is True
    assert mounts["/data"]["Type"] == "bind"
    assert mounts["/output"]["ReadOnly"] is False
    assert opts["environment"] == {"A": "1"}
    assert opts["labels"] == {
        "sandbox.managed": "1",
        "sandbox.job": "job1",
        "sandbox.step": "train",
    }


def test_no_gpu_unless_assigned() -> None:
    assert "device_requests" not in container_options(spec())


def test_gpu_request_is_exactly_one_named_device() -> None:
    opts = container_options(spec(gpu_device="GPU-1234"))
    (request,) = opts["device_requests"]
    assert request["DeviceIDs"] == ["GPU-1234"]
    assert request["Count"] in (0, None)  # never "all GPUs" (-1)
    assert request["Capabilities"] == [["gpu"]]


@pytest.mark.parametrize("socket", ["/var/run/docker.sock", "/run/docker.sock", "/tmp/x.sock"])
def test_docker_socket_is_never_mounted(socket: str) -> None:
    with pytest.raises(ValueError, match="socket"):
        container_options(spec(mounts=(BindMount(Path(socket), "/var/run/docker.sock"),)))


def test_runtime_from_policy() -> None:
    strict = load_policy("strict")
    built = containers.guest_spec(
        strict, job_id="j", step="train", image="i", module="train", mounts=[]
    )
    assert container_options(built)["runtime"] == "runsc"
    assert built.resources.pids == strict.limits.pids


def test_guest_env_is_explicit_and_host_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    env = containers.guest_env(load_policy("default"))
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) == {
        "SANDBOX_ALGORITHM",
        "SANDBOX_DATA",
        "SANDBOX_OUTPUT",
        "SANDBOX_WORK",
        "SANDBOX_TRAIN",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "HOME",
        "TMPDIR",
    }


def test_path_variables_only_for_mounted_paths() -> None:
    built = containers.guest_spec(
        load_policy("default"),
        job_id="j",
        step="export",
        image="i",
        module="export",
        mounts=[BindMount(Path("/a"), "/algorithm"), BindMount(Path("/o"), "/output", False)],
    )
    assert "SANDBOX_DATA" not in built.env
    assert built.env["SANDBOX_ALGORITHM"] == "/algorithm"
    assert built.env["SANDBOX_OUTPUT"] == "/output"
