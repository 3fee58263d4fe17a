"""Tamper-evident records: the hash-chained audit log and signed release attestations.

    keys         Ed25519 signing key: created 0600, refused when group/other-readable
    log          AuditLog (append-only JSON Lines, hash chain, signed checkpoints), verify_log
    attestation  in-toto Statement in a DSSE envelope; dataset commitment; verification

This package depends only on sandbox.errors, the standard library and cryptography.
"""

from sandbox.audit.attestation import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    AttestationCheck,
    DatasetCommitment,
    Finding,
    attest_report,
    check_dataset_opening,
    commit_dataset,
    make_attestation,
    pae,
    read_envelope,
    verify_attestation,
)
from sandbox.audit.encoding import sha256_file, utc_now
from sandbox.audit.keys import (
    default_key_path,
    default_public_key,
    generate_signing_key,
    key_id,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
    save_public_key,
    save_signing_key,
)
from sandbox.audit.log import (
    KINDS,
    AuditLog,
    Entry,
    LogHead,
    Problem,
    VerifyResult,
    default_log_path,
    verify_log,
)

__all__ = [
    "KINDS",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "AttestationCheck",
    "AuditLog",
    "DatasetCommitment",
    "Entry",
    "Finding",
    "LogHead",
    "Problem",
    "VerifyResult",
    "attest_report",
    "check_dataset_opening",
    "commit_dataset",
    "default_key_path",
    "default_log_path",
    "default_public_key",
    "generate_signing_key",
    "key_id",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key",
    "make_attestation",
    "pae",
    "public_key_pem",
    "read_envelope",
    "save_public_key",
    "save_signing_key",
    "sha256_file",
    "utc_now",
    "verify_attestation",
    "verify_log",
]
