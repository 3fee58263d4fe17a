"""The server's state directory and `sandbox init`.

STATE/ca.pem ca.key                 the private CA (key 0600)
STATE/server.pem server.key         the server's certificate (SAN localhost, 127.0.0.1, ::1)
STATE/master.key                    wraps every dataset key (0600)
STATE/signing.key signing.pub       Ed25519: attestations and audit checkpoints
STATE/metadata.sqlite blobs/        metadata and content-addressed blobs
STATE/audit.jsonl                   hash-chained audit log
STATE/jobs/JOB/out/                 each job's results (report, logs, model)
STATE/work/                         per-job private plaintext (tmpfs), swept at start
STATE/parties/NAME/                 a party's client key, certificate and config.json
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sandbox.api.pki import CertificateAuthority, write_private
from sandbox.audit import generate_signing_key, save_public_key, save_signing_key
from sandbox.audit.keys import make_private_dir
from sandbox.errors import FailedPrecondition, InvalidInput
from sandbox.store import MasterKey, Role, SqliteMetadataStore
from sandbox.store.metadata import check_party_name, check_role

DEFAULT_ADDRESS: Final = "localhost:50443"


def default_state_dir() -> Path:
    env = os.environ.get("SANDBOX_STATE")
    if env:
        return Path(env)
    return Path("/var/lib/sandbox/state") if os.geteuid() == 0 else Path.home() / ".sandbox"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def master_key(self) -> Path:
        return self.root / "master.key"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    @property
    def public_key(self) -> Path:
        return self.root / "signing.pub"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.sqlite"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def party_dir(self, name: str) -> Path:
        return self.root / "parties" / check_party_name(name)

    def party_config(self, name: str) -> Path:
        return self.party_dir(name) / "config.json"

    def check(self) -> None:
        for path in (self.ca_cert, self.server_cert, self.server_key, self.master_key):
            if not path.exists():
                raise FailedPrecondition(
                    f"{path} is missing: {self.root} is not an initialised state directory; "
                    "run `sandbox init --dir DIR --party NAME:ROLE ...` first"
                )


def parse_party(spec: str) -> tuple[str, Role]:
    """`NAME:ROLE` -> (name, role), with errors naming the allowed roles."""
    name, sep, role = spec.partition(":")
    if not sep:
        raise InvalidInput(
            f"--party {spec!r} must be NAME:ROLE with ROLE one of "
            f"{', '.join(r.value for r in Role)}"
        )
    return check_party_name(name), check_role(role)


def write_client_config(state: StateDir, name: str, role: Role, address: str) -> Path:
    config: dict[str, Any] = {
        "address": address,
        "party": name,
        "role": role.value,
        "ca": "ca.pem",
        "cert": "client.pem",
        "key": "client.key",
    }
    path = state.party_config(name)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def add_party(
    state: StateDir, ca: CertificateAuthority, name: str, role: Role, address: str
) -> Path:
    """Issue `name`'s client certificate and write its config; returns the config path."""
    directory = state.party_dir(name)
    if directory.exists():
        raise FailedPrecondition(f"party {name} already exists in {state.root}")
    make_private_dir(directory)
    issued = ca.issue_client(name, role)
    write_private(directory / "client.key", issued.key_pem)
    (directory / "client.pem").write_bytes(issued.cert_pem)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    return write_client_config(state, name, role, address)


def init_state(
    root: Path, parties: list[tuple[str, Role]], address: str = DEFAULT_ADDRESS
) -> dict[str, Path]:
    """Create a state directory (or add parties to an existing one).

    Returns each party's client config path.
    """
    state = StateDir(root)
    make_private_dir(root)
    os.chmod(root, 0o700)
    if state.ca_cert.exists():
        ca = CertificateAuthority.load(state.ca_cert, state.ca_key)
    else:
        ca = CertificateAuthority.create()
        write_private(state.ca_key, ca.key_pem)
        state.ca_cert.write_bytes(ca.cert_pem)
        server = ca.issue_server()
        write_private(state.server_key, server.key_pem)
        state.server_cert.write_bytes(server.cert_pem)
        MasterKey.create(state.master_key)
        key = generate_signing_key()
        save_signing_key(key, state.signing_key)
        save_public_key(key, state.public_key)
    configs: dict[str, Path] = {}
    store = SqliteMetadataStore(state.metadata)
    try:
        for name, role in parties:
            configs[name] = add_party(state, ca, name, role, address)
            store.add_party(name, role)
    finally:
        store.close()
    return configs
