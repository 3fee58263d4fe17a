"""mTLS: no certificate, a foreign CA, an expired certificate, a certificate without an
identity - none gets an answer. The identity comes from the certificate only."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from sandbox.api.gen.sandbox.v1 import policy_pb2, policy_pb2_grpc
from sandbox.api.pki import CertificateAuthority, identity_from_pem
from sandbox.client.config import ClientConfig, load_config
from sandbox.client.connection import Client
from sandbox.errors import SandboxError, Unauthenticated
from sandbox.store import Role
from tests.api.conftest import Env


def _list_policies(channel: grpc.Channel) -> grpc.StatusCode:
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    try:
        stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=5)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _with_cert(env: Env, tmp_path: Path, key_pem: bytes, cert_pem: bytes) -> ClientConfig:
    (tmp_path / "k.pem").write_bytes(key_pem)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    base = load_config(env.configs["alice"])
    return replace(
        base,
        address=f"127.0.0.1:{env.server.port}",
        key=tmp_path / "k.pem",
        cert=tmp_path / "c.pem",
    )


def test_a_valid_certificate_is_answered(env: Env) -> None:
    assert _list_policies(env.client("alice").channel) is grpc.StatusCode.OK


def test_no_client_certificate_is_refused(env: Env) -> None:
    ca = load_config(env.configs["alice"]).ca.read_bytes()
    channel = grpc.secure_channel(
        f"127.0.0.1:{env.server.port}", grpc.ssl_channel_credentials(root_certificates=ca)
    )
    assert _list_policies(channel) is grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_plaintext_is_refused(env: Env) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{env.server.port}")
    assert _list_policies(channel) is grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_certificate_from_another_ca_is_refused(env: Env, tmp_path: Path) -> None:
    other = CertificateAuthority.create("someone else's CA")
    issued = other.issue_client("alice", Role.DATA_OWNER)  # the right name, the wrong CA
    config = _with_cert(env, tmp_path, issued.key_pem, issued.cert_pem)
    with Client(config, progress=False) as client:
        assert _list_policies(client.channel) is grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(env: Env, tmp_path: Path) -> None:
    ca = CertificateAuthority.load(env.state / "ca.pem", env.state / "ca.key")
    now = dt.datetime.now(dt.UTC)
    issued = ca.issue_client(
        "alice",
        Role.DATA_OWNER,
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    config = _with_cert(env, tmp_path, issued.key_pem, issued.cert_pem)
    with Client(config, progress=False) as client:
        assert _list_policies(client.channel) is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_without_a_sandbox_identity_is_unauthenticated(
    env: Env, tmp_path: Path
) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = CertificateAuthority.load(env.state / "ca.pem", env.state / "ca.key")
    issued = ca._issue(  # signed by our CA for client use, but no role and no URI
        "alice",
        org_unit=None,
        sans=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=None,
        not_after=None,
    )
    config = _with_cert(env, tmp_path, issued.key_pem, issued.cert_pem)
    with Client(config, progress=False) as client:
        assert _list_policies(client.channel) is grpc.StatusCode.UNAUTHENTICATED


def test_a_party_cannot_switch_roles(env: Env, tmp_path: Path) -> None:
    """alice is a data owner; a certificate naming her a provider is refused."""
    ca = CertificateAuthority.load(env.state / "ca.pem", env.state / "ca.key")
    issued = ca.issue_client("alice", Role.PROVIDER)
    config = _with_cert(env, tmp_path, issued.key_pem, issued.cert_pem)
    with Client(config, progress=False) as client:
        assert _list_policies(client.channel) is grpc.StatusCode.PERMISSION_DENIED


def test_identity_comes_from_the_certificate() -> None:
    ca = CertificateAuthority.create()
    who = identity_from_pem(ca.issue_client("bob", Role.PROVIDER).cert_pem)
    assert (who.party, who.role) == ("bob", Role.PROVIDER)
    with pytest.raises(Unauthenticated):
        identity_from_pem(ca.issue_server().cert_pem)
    with pytest.raises(SandboxError):
        ca.issue_client("bad name!", Role.PROVIDER)
