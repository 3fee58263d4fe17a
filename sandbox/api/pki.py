"""Certificates for mTLS: a private CA, the server's certificate, one per party.

A party's identity travels in its client certificate, signed by the CA: the
subject's CN is the party name, OU the role, and a SAN URI `sandbox://ROLE/PARTY`
says both again. The server reads them from the *verified* peer certificate
(`identity_from_pem`), never from request fields.

Keys are ECDSA P-256 (fast to make and to handshake); private keys are written
0600 and never overwrite a file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox.errors import FailedPrecondition, InvalidInput, Unauthenticated
from sandbox.store.metadata import Role, check_party_name, check_role

URI_SCHEME: Final = "sandbox"
SERVER_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS: Final = 365


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the verified client certificate says."""

    party: str
    role: Role


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A self-signed CA that issues the server's and the parties' certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str = "sandbox CA", days: int = 3650) -> CertificateAuthority:
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{key_path} is not the CA's EC private key")
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def _issue(
        self,
        common_name: str,
        *,
        org_unit: str | None,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> Issued:
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if org_unit is not None:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, org_unit))
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=DEFAULT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans:  # an empty SubjectAlternativeName is invalid (cryptography >= 51 refuses it)
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
            self.key, hashes.SHA256()
        )
        return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))

    def issue_server(self, hosts: tuple[str, ...] = SERVER_HOSTS) -> Issued:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(
            hosts[0],
            org_unit=None,
            sans=sans,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            not_before=None,
            not_after=None,
        )

    def issue_client(
        self,
        party: str,
        role: Role | str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        role = check_role(role)
        check_party_name(party)
        uri = x509.UniformResourceIdentifier(f"{URI_SCHEME}://{role.value}/{party}")
        return self._issue(
            party,
            org_unit=role.value,
            sans=[uri],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=not_before,
            not_after=not_after,
        )


def identity_from_pem(pem: bytes) -> Identity:
    """The party and role of a client certificate the TLS layer has already verified.

    CN, OU and the SAN URI must agree; anything else is refused.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        raise Unauthenticated("the client certificate carries no sandbox identity") from None
    ours = [u for u in uris if u.startswith(f"{URI_SCHEME}://")]
    if len(cn) != 1 or len(ou) != 1 or len(ours) != 1:
        raise Unauthenticated("the client certificate carries no sandbox identity")
    party, role = str(cn[0].value), str(ou[0].value)
    if ours[0] != f"{URI_SCHEME}://{role}/{party}":
        raise Unauthenticated("the client certificate's name and URI disagree")
    try:
        return Identity(check_party_name(party), check_role(role))
    except InvalidInput:
        raise Unauthenticated("the client certificate names an unknown role") from None


def write_private(path: Path, data: bytes) -> None:
    """A new file readable by its owner only; never replaces an existing one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FailedPrecondition(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
