"""Deny by default: every RPC has a rule, and each role gets exactly what the table says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from sandbox.api import authz
from sandbox.api.gen.sandbox.v1 import (
    algorithm_pb2,
    audit_pb2,
    dataset_pb2,
    job_pb2,
    model_pb2,
    policy_pb2,
)
from sandbox.store import Role
from tests.api.conftest import Env

ROOT = Path(__file__).resolve().parents[2]
MODULES = (algorithm_pb2, audit_pb2, dataset_pb2, job_pb2, model_pb2, policy_pb2)


def services() -> list[ServiceDescriptor]:
    return [svc for module in MODULES for svc in module.DESCRIPTOR.services_by_name.values()]


def all_methods() -> list[tuple[str, object]]:
    return [
        (f"/{svc.full_name}/{method.name}", method) for svc in services() for method in svc.methods
    ]


def test_every_rpc_has_a_rule() -> None:
    missing = [name for name, _ in all_methods() if name not in authz.RULES]
    assert not missing, f"RPCs without an authorisation rule (denied to all): {missing}"
    assert len(all_methods()) >= 19


def test_every_proto_service_is_covered() -> None:
    found = sorted(p.stem for p in (ROOT / "proto/sandbox/v1").glob("*.proto"))
    assert found == ["algorithm", "audit", "common", "dataset", "job", "model", "policy"]


def test_unknown_methods_are_denied() -> None:
    for role in Role:
        assert not authz.allowed("/sandbox.v1.JobService/DeleteEverything", role)
        assert not authz.allowed("", role)


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        ["bash", "scripts/gen_protos.sh", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PY": sys.executable},
    )
    assert result.returncode == 0, result.stderr


def test_check_names_stale_stubs(tmp_path: Path) -> None:
    """--check fails, naming the file, when a checked-in stub differs."""
    copy = tmp_path / "repo"
    subprocess.run(
        ["cp", "-r", str(ROOT / "proto"), str(ROOT / "scripts"), str(tmp_path)], check=True
    )
    copy.mkdir()
    for name in ("proto", "scripts"):
        (tmp_path / name).rename(copy / name)
    (copy / "sandbox/api").mkdir(parents=True)
    subprocess.run(
        ["cp", "-r", str(ROOT / "sandbox/api/gen"), str(copy / "sandbox/api/")], check=True
    )
    stale = copy / "sandbox/api/gen/sandbox/v1/job_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited\n")
    result = subprocess.run(
        ["bash", "scripts/gen_protos.sh", "--check"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "job_pb2.py" in result.stderr


# ------------------------------------------------------------------ each role x each RPC


def _call(channel: grpc.Channel, name: str, method: object) -> grpc.StatusCode:
    """Call `name` with an empty request; return the status code (OK when it worked)."""
    m = method  # a MethodDescriptor
    request_cls = _message_class(m.input_type)  # type: ignore[attr-defined]
    response_cls = _message_class(m.output_type)  # type: ignore[attr-defined]
    kwargs = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    client_stream = m.client_streaming  # type: ignore[attr-defined]
    server_stream = m.server_streaming  # type: ignore[attr-defined]
    try:
        if client_stream and not server_stream:
            channel.stream_unary(name, **kwargs)(iter(()), timeout=10)
        elif server_stream and not client_stream:
            for _ in channel.unary_stream(name, **kwargs)(request_cls(), timeout=10):
                break
        else:
            channel.unary_unary(name, **kwargs)(request_cls(), timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _message_class(descriptor: object) -> type:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)  # type: ignore[arg-type]


ROLE_PARTY = {
    Role.DATA_OWNER: "alice",
    Role.PROVIDER: "bob",
    Role.OPERATOR: "olga",
    Role.SECURITY: "sam",
}


def test_each_role_against_each_rpc(env: Env) -> None:
    """Allowed: anything but PERMISSION_DENIED (an empty request is usually invalid).
    Denied: PERMISSION_DENIED before the servicer runs."""
    expected_total = 0
    wrong: list[str] = []
    for role, party in ROLE_PARTY.items():
        channel = env.client(party).channel
        for name, method in all_methods():
            code = _call(channel, name, method)
            allowed = role in authz.RULES[name]
            expected_total += allowed
            if allowed and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL):
                wrong.append(f"{role.value} {name}: {code.name}, expected allowed")
            if not allowed and code is not grpc.StatusCode.PERMISSION_DENIED:
                wrong.append(f"{role.value} {name}: {code.name}, expected PERMISSION_DENIED")
    assert not wrong, "\n".join(wrong)
    assert expected_total > 0


@pytest.mark.parametrize(
    ("party", "method", "allowed"),
    [
        ("alice", "/sandbox.v1.DatasetService/UploadDataset", True),
        ("bob", "/sandbox.v1.DatasetService/UploadDataset", False),
        ("olga", "/sandbox.v1.DatasetService/UploadDataset", False),
        ("bob", "/sandbox.v1.AlgorithmService/UploadAlgorithm", True),
        ("alice", "/sandbox.v1.AlgorithmService/UploadAlgorithm", False),
        ("alice", "/sandbox.v1.JobService/ApproveJob", True),
        ("bob", "/sandbox.v1.JobService/ApproveJob", False),
        ("olga", "/sandbox.v1.ModelService/DownloadModel", False),
        ("sam", "/sandbox.v1.ModelService/DownloadModel", False),
        ("sam", "/sandbox.v1.AuditService/ReadAuditLog", True),
        ("bob", "/sandbox.v1.AuditService/ReadAuditLog", False),
        ("bob", "/sandbox.v1.DatasetService/ListDatasets", False),
    ],
)
def test_expected_decisions(party: str, method: str, allowed: bool) -> None:
    """The table says what the design says (a second, hand-written statement of it)."""
    role = {"alice": Role.DATA_OWNER, "bob": Role.PROVIDER, "olga": Role.OPERATOR}.get(
        party, Role.SECURITY
    )
    assert authz.allowed(method, role) is allowed


def test_health_and_reflection_answer(env: Env) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = env.client("sam").channel
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="sandbox.v1.JobService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"sandbox.v1.JobService", "sandbox.v1.DatasetService"} <= names


def test_unknown_errors_reach_clients_as_internal_without_detail(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> list[str]:
        raise RuntimeError("secret detail: /var/lib/sandbox/state/master.key")

    monkeypatch.setattr(env.server.platform, "list_policies", broken)
    with pytest.raises(grpc.RpcError) as caught:
        env.client("sam").policies.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "secret detail" in caplog.text  # logged server-side only


def test_a_method_the_server_does_not_know_is_unimplemented(env: Env) -> None:
    call = env.client("olga").channel.unary_unary("/sandbox.v1.JobService/DeleteEverything")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_no_rpc_returns_a_datasets_contents() -> None:
    """Bytes leave the server only as a released model: one RPC streams Chunks."""
    streams_bytes = [
        name
        for name, method in all_methods()
        if method.output_type.full_name == "sandbox.v1.Chunk"  # type: ignore[attr-defined]
        or any(
            f.type == f.TYPE_BYTES and f.name != "logs"
            for f in method.output_type.fields  # type: ignore[attr-defined]
        )
    ]
    assert streams_bytes == ["/sandbox.v1.ModelService/DownloadModel"]
    dataset_rpcs = [n for n, _ in all_methods() if "/sandbox.v1.DatasetService/" in n]
    assert sorted(dataset_rpcs) == [
        "/sandbox.v1.DatasetService/GetDataset",
        "/sandbox.v1.DatasetService/ListDatasets",
        "/sandbox.v1.DatasetService/UploadDataset",
    ]
