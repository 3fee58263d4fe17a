"""The runtime image, built for real (debootstrap base, wheelhouse, docker build)."""

from __future__ import annotations

import time

import docker
import pytest

from sandbox.runner import images

pytestmark = pytest.mark.docker

PROBE = (
    "import os, sys, numpy, safetensors, torch; "
    "print(os.getuid(), os.getgid(), torch.__version__, numpy.__version__, "
    "safetensors.__version__, sys.version_info[:2] == (3, 11))"
)


def run(client: docker.DockerClient, image: str, code: str, runtime: str | None = None) -> str:
    output = client.containers.run(
        image, ["python", "-c", code], network_mode="none", remove=True, runtime=runtime
    )
    return bytes(output).decode().strip()


def test_tag_is_current_and_labelled(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    assert runtime_image == images.runtime_image_tag("cpu")
    image = docker_client.images.get(runtime_image)
    assert image.labels[images.LABEL_KIND] == "runtime"
    assert image.labels[images.LABEL_HASH] == runtime_image.rsplit("-", 1)[1]
    assert image.labels[images.LABEL_BASE] == images.base_image_tag()
    config = image.attrs["Config"]
    assert config["User"] == "65534:65534"
    assert config["WorkingDir"] == "/tmp"
    assert not config.get("Entrypoint")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"] == "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["PYTHONPATH"] == "/opt/trusted"
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"


def test_packages_import_as_nobody(docker_client: docker.DockerClient, runtime_image: str) -> None:
    assert run(docker_client, runtime_image, PROBE) == "65534 65534 2.13.0+cpu 2.4.6 0.8.0 True"


def test_no_wheels_and_read_only_trusted_code(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    code = (
        "import glob, os, sandbox.guest; "
        "print(os.path.exists('/wheels'), glob.glob('/opt/**/*.whl', recursive=True), "
        "sandbox.guest.__file__, "
        "[os.access(p, os.W_OK) for p in ('/opt/trusted/sandbox/guest', '/opt/venv/lib')])"
    )
    assert run(docker_client, runtime_image, code) == (
        "False [] /opt/trusted/sandbox/guest/__init__.py [False, False]"
    )


def test_guest_modules_match_the_repository(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    expected = sorted(path.name for path in images.Layout.default().guest_dir.glob("*.py"))
    listed = run(
        docker_client,
        runtime_image,
        "import os; print(sorted(os.listdir('/opt/trusted/sandbox/guest')))",
    )
    assert listed == str(expected)


def test_runs_under_gvisor(docker_client: docker.DockerClient, runtime_image: str) -> None:
    if "runsc" not in docker_client.info().get("Runtimes", {}):
        pytest.skip("the engine has no runsc runtime (scripts/bootstrap.sh registers it)")
    assert run(docker_client, runtime_image, PROBE, runtime="runsc").startswith(
        "65534 65534 2.13.0+cpu"
    )


def test_second_ensure_is_fast(docker_client: docker.DockerClient, runtime_image: str) -> None:
    started = time.monotonic()
    again = images.ensure_runtime_image("cpu", client=docker_client)
    elapsed = time.monotonic() - started
    assert again == runtime_image
    assert elapsed < 5, f"ensure_runtime_image took {elapsed:.1f} s with the image present"


def test_prune_keeps_the_current_tag(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    # A private repository, so the test never removes anybody's sandbox-runtime tags.
    repository = f"sandbox-runtime-test-{time.time_ns()}"
    current = f"{repository}:{runtime_image.split(':', 1)[1]}"
    stale = f"{repository}:cpu-0000000000000000"
    image = docker_client.images.get(runtime_image)
    for name in (current, stale):
        image.tag(name)
    try:
        removed = images.prune_runtime_images(
            client=docker_client, log=lambda _line: None, repository=repository, bases=False
        )
        assert removed == [stale]
        assert images._image_exists(docker_client, current)
        assert images._image_exists(docker_client, runtime_image)
        assert not images._image_exists(docker_client, stale)
    finally:
        for name in (current, stale):
            if images._image_exists(docker_client, name):
                docker_client.images.remove(name)
