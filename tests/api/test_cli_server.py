"""The server-facing `sandbox` commands, in-process against a real mTLS server."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sandbox import cli
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from tests.api.conftest import Env


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else out


def _config(env: Env, party: str) -> str:
    path = env.configs[party]
    data = json.loads(path.read_text())
    data["address"] = f"127.0.0.1:{env.server.port}"
    path.write_text(json.dumps(data))
    return str(path)


def test_init_writes_keys_certificates_and_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code, out = run(
        capsys,
        "init",
        "--dir",
        str(state),
        "--party",
        "acme:data_owner",
        "--party",
        "modelco:provider",
        "--json",
    )
    assert code == 0
    assert set(out["configs"]) == {"acme", "modelco"}
    for secret in ("ca.key", "server.key", "master.key", "signing.key", "parties/acme/client.key"):
        assert stat.S_IMODE(os.stat(state / secret).st_mode) == 0o600, secret
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    config = json.loads((state / "parties/modelco/config.json").read_text())
    assert config["role"] == "provider" and config["address"] == "localhost:50443"
    # adding a party later reuses the CA; a duplicate is refused
    assert run(capsys, "init", "--dir", str(state), "--party", "ops:operator")[0] == 0
    assert run(capsys, "init", "--dir", str(state), "--party", "ops:operator")[0] == 5


def test_init_rejects_bad_party_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", "--dir", str(tmp_path / "s"), "--party", "acme"]) == 2
    assert cli.main(["init", "--dir", str(tmp_path / "s"), "--party", "acme:king"]) == 2
    assert "data_owner, provider, operator, security" in capsys.readouterr().err


def test_the_commands_end_to_end(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, provider = _config(env, "alice"), _config(env, "bob")
    digits = write_digits(tmp_path / "digits.npz")
    code, ds = run(
        capsys, "dataset", "upload", str(digits), "--name", "digits", "--config", owner, "--json"
    )
    assert code == 0 and ds["id"].startswith("ds_") and ds["num_classes"] == 10
    code, alg = run(
        capsys, "algorithm", "upload", str(EXAMPLE_ALGORITHM), "--config", provider, "--json"
    )
    assert code == 0 and alg["name"] == "digits_mlp"
    code, job = run(
        capsys,
        "job",
        "submit",
        "--dataset",
        ds["id"],
        "--algorithm",
        alg["id"],
        "--config",
        provider,
        "--json",
    )
    assert code == 0 and job["approval"] == "pending"
    code, approved = run(capsys, "job", "approve", job["id"], "--config", owner, "--json")
    assert code == 0 and approved["approval"] == "approved"
    code, watched = run(capsys, "job", "watch", job["id"], "--config", provider, "--json")
    assert (code, watched["state"], watched["decision"]) == (0, "done", "released")
    assert "history" not in watched and "reasons" not in watched  # the provider's view
    code, listed = run(capsys, "job", "list", "--config", owner, "--json")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    model = tmp_path / "model.safetensors"
    code, got = run(
        capsys, "model", "download", job["id"], "--out", str(model), "--config", provider, "--json"
    )
    assert code == 0 and got["verified"] and model.stat().st_size == got["bytes"]
    code, report = run(
        capsys,
        "job",
        "report",
        job["id"],
        "--config",
        owner,
        "--json",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0 and report["utility"]["released_accuracy"] == 0.95
    assert (tmp_path / "r" / "logs.txt").exists()
    assert (tmp_path / "r" / "platform.pem").read_text().startswith("-----BEGIN PUBLIC KEY")
    code, text = run(capsys, "job", "show", job["id"], "--config", owner)
    assert code == 0 and "done (released)" in text


def test_exit_codes_come_from_the_catalog(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, provider = _config(env, "alice"), _config(env, "bob")
    assert cli.main(["job", "show", "job_nope", "--config", owner]) == 4
    assert cli.main(["job", "approve", "job_nope", "--config", provider]) == 6  # role denied
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope" * 100)
    assert cli.main(["dataset", "upload", str(bad), "--name", "b", "--config", owner]) == 2
    err = capsys.readouterr().err
    assert "zip" in err and "Traceback" not in err
    data = json.loads(Path(owner).read_text())
    data["address"] = "127.0.0.1:1"  # nothing listens there
    Path(owner).write_text(json.dumps(data))
    assert cli.main(["job", "list", "--config", owner]) == 5
    assert "unavailable" in capsys.readouterr().err
    env.executor.mode = "rejected"
    provider_ds = _config(env, "alice")
    ds = env.client("alice").upload_dataset(write_digits(tmp_path / "d.npz"), "d").id
    alg = env.client("bob").upload_algorithm(EXAMPLE_ALGORITHM).id
    job = env.client("alice").submit(ds, alg, "default").id
    assert cli.main(["job", "watch", job, "--config", provider_ds]) == 10  # rejected
