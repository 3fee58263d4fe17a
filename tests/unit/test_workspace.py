"""Job workspaces: capped tmpfs mounts, and nothing left behind on any path."""

import json
import os
from pathlib import Path

import pytest

from sandbox.runner.workspace import JobWorkspace, remove_job_dir, sweep_stale

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs mounts need root")


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


@root_only
def test_output_is_a_capped_tmpfs_owned_by_the_container_user(tmp_path: Path) -> None:
    with JobWorkspace(tmp_path, "job1") as ws:
        out = ws.output_dir("train", 1)
        assert out.stat().st_uid == 65534
        assert (ws.path.stat().st_mode & 0o777) == 0o700
        with pytest.raises(OSError, match="No space left"), open(out / "fill", "wb") as f:
            f.write(b"x" * (2 * 1024 * 1024))
            f.flush()
            os.fsync(f.fileno())
    assert not (tmp_path / "job1").exists()
    assert mounts_under(tmp_path) == []


@root_only
def test_cleanup_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), JobWorkspace(tmp_path, "job2") as ws:
        ws.tmpfs("data", 1)
        (ws.path / "data" / "secret.npz").write_bytes(b"plaintext")
        raise RuntimeError("crash")
    assert not (tmp_path / "job2").exists()
    assert mounts_under(tmp_path) == []


@root_only
def test_sweep_removes_workspaces_of_dead_owners(tmp_path: Path) -> None:
    ws = JobWorkspace(tmp_path, "dead").__enter__()
    ws.tmpfs("data", 1)
    (ws.path / "owner.json").write_text(json.dumps({"pid": 2**22 + 12345}))  # no such pid
    live = JobWorkspace(tmp_path, "live").__enter__()
    (live.path / "owner.json").write_text(json.dumps({"pid": 1}))
    assert sweep_stale(tmp_path) == ["dead"]
    assert not (tmp_path / "dead").exists()
    assert (tmp_path / "live").exists()
    remove_job_dir(live.path)
    assert mounts_under(tmp_path) == []
