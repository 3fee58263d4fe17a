"""Release attestations: a signed in-toto Statement about one released model.

Format. A DSSE envelope (https://github.com/secure-systems-lab/dsse, protocol v1):

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(statement bytes),
     "signatures": [{"keyid": key_id(public key), "sig": base64(Ed25519(PAE))}]}

    PAE = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
          (LEN: ASCII decimal of the byte length, no leading zeros)

The statement is an in-toto Statement v1 whose predicate type is PREDICATE_TYPE,
"https://sandbox.example/release/v1" (`.example` is reserved, so the URI never
resolves to someone else's document; it is a name, versioned by its last part).
The statement bytes are its canonical JSON. The predicate:

    job_id      the job's id
    algorithm   {"sha256"}: the algorithm package as uploaded
    policy      {"name", "sha256"}: the effective policy (sandbox.policy.load.policy_hash)
    dataset     {"scheme", "commitment"}: a hiding commitment to the dataset's sha256
    checks      [{"name", "verdict"}, ...]: every check that ran, in order
    decision    released | released_sanitized | released_dp
    dp          {"epsilon", "delta"} or null
    times       {"submitted", "released"}: RFC 3339 UTC
    audit       optional {"seq", "hash"}: the audit log's head at release, an outside
                record against which a truncated log is detected (`verify_log(anchor=)`)

Dataset commitment (scheme COMMITMENT_SCHEME): HMAC-SHA256 keyed by a random 32-byte
salt over COMMITMENT_CONTEXT + the dataset's hex sha256. The salt stays with the data
owner (`DatasetCommitment.opening()`); without it the commitment reveals nothing
about the dataset, not even whether two releases used the same one. With the
opening anyone can check it (`check_dataset_opening`); note that the opening reveals
the dataset's sha256, which confirms a guess of the whole dataset.

A DSSE keyid is an unauthenticated hint (the spec forbids security decisions on
it): a signature that verifies under the given key counts even if its keyid was
edited; the check then says so in a note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox.audit.encoding import (
    canonical_json,
    format_time,
    is_sha256_hex,
    is_utc_time,
    open_regular,
    sha256_file,
)
from sandbox.audit.keys import key_id
from sandbox.audit.log import LogHead
from sandbox.errors import InvalidInput

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://sandbox.example/release/v1"
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
MODEL_NAME: Final = "model.safetensors"
COMMITMENT_SCHEME: Final = "hmac-sha256-salted/v1"
COMMITMENT_CONTEXT: Final = b"sandbox.dataset-commitment.v1 "
SALT_BYTES: Final = 32
RELEASED: Final = ("released", "released_sanitized", "released_dp")
MAX_ENVELOPE_BYTES: Final = 1 << 20


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding of (UTF8(payload_type), payload)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64 (DSSE verifiers must accept both), padding optional."""
    normal = text.translate(str.maketrans("-_", "+/"))
    return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)


# ------------------------------------------------------------------ dataset commitment


@dataclass(frozen=True)
class DatasetCommitment:
    commitment: str
    salt: bytes
    dataset_sha256: str

    def opening(self) -> dict[str, str]:
        """What the data owner keeps (never the provider): it opens the commitment."""
        return {
            "scheme": COMMITMENT_SCHEME,
            "commitment": self.commitment,
            "salt": self.salt.hex(),
            "dataset_sha256": self.dataset_sha256,
        }


def _commit(salt: bytes, dataset_sha256: str) -> str:
    message = COMMITMENT_CONTEXT + dataset_sha256.encode("ascii")
    return hmac.new(salt, message, hashlib.sha256).hexdigest()


def commit_dataset(dataset_sha256: str, *, salt: bytes | None = None) -> DatasetCommitment:
    """Commit to a dataset's sha256 with a fresh random salt (or the given one)."""
    if not is_sha256_hex(dataset_sha256):
        raise InvalidInput("dataset_sha256 must be 64 lowercase hex digits")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise InvalidInput(f"a commitment salt is {SALT_BYTES} random bytes, got {len(salt)}")
    return DatasetCommitment(_commit(salt, dataset_sha256), salt, dataset_sha256)


def check_dataset_opening(commitment: str, salt: bytes | str, dataset_sha256: str) -> bool:
    """True when (salt, dataset_sha256) opens `commitment` (constant-time comparison)."""
    if isinstance(salt, str):
        try:
            salt = bytes.fromhex(salt)
        except ValueError:
            return False
    if len(salt) != SALT_BYTES or not is_sha256_hex(dataset_sha256):
        return False
    return hmac.compare_digest(_commit(salt, dataset_sha256), commitment)


# ---------------------------------------------------------------------------- making


def _time(value: datetime | str, name: str) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    if not is_utc_time(value):
        raise InvalidInput(f"{name} must be RFC 3339 UTC like 2025-01-31T12:00:00Z, got {value!r}")
    return value


def _dp(dp: Mapping[str, Any] | None) -> dict[str, float] | None:
    if dp is None:
        return None
    try:
        epsilon, delta = float(dp["epsilon"]), float(dp["delta"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInput("dp must be null or hold numbers epsilon and delta") from None
    if not (math.isfinite(epsilon) and epsilon > 0 and 0 <= delta < 1):
        raise InvalidInput(
            f"dp needs a finite epsilon > 0 and 0 <= delta < 1, got ({epsilon}, {delta})"
        )
    return {"epsilon": epsilon, "delta": delta}


def make_statement(
    *,
    model_sha256: str,
    algorithm_sha256: str,
    policy_name: str,
    policy_sha256: str,
    dataset_commitment: str,
    checks: Sequence[Mapping[str, Any]],
    decision: str,
    dp: Mapping[str, Any] | None,
    submitted: datetime | str,
    released: datetime | str,
    job_id: str,
    audit_head: LogHead | None = None,
) -> dict[str, Any]:
    """The in-toto Statement (unsigned), with every field validated."""
    for name, digest in (
        ("model_sha256", model_sha256),
        ("algorithm_sha256", algorithm_sha256),
        ("policy_sha256", policy_sha256),
        ("dataset_commitment", dataset_commitment),
    ):
        if not is_sha256_hex(digest):
            raise InvalidInput(f"{name} must be 64 lowercase hex digits, got {digest!r}")
    if decision not in RELEASED:
        raise InvalidInput(
            f"decision {decision!r} releases no model, so there is nothing to attest "
            f"(allowed: {', '.join(RELEASED)}); the audit log records rejections"
        )
    if not (job_id and policy_name):
        raise InvalidInput("job_id and policy_name must be non-empty strings")
    verdicts = []
    for check in checks:
        check_name, verdict = check.get("name"), check.get("verdict")
        if not (
            isinstance(check_name, str) and check_name and isinstance(verdict, str) and verdict
        ):
            raise InvalidInput(f"each check needs a string name and verdict, got {dict(check)!r}")
        verdicts.append({"name": check_name, "verdict": verdict})
    dp_value = _dp(dp)
    if decision == "released_dp" and dp_value is None:
        raise InvalidInput("decision released_dp needs dp (epsilon, delta)")
    predicate: dict[str, Any] = {
        "job_id": job_id,
        "algorithm": {"sha256": algorithm_sha256},
        "policy": {"name": policy_name, "sha256": policy_sha256},
        "dataset": {"scheme": COMMITMENT_SCHEME, "commitment": dataset_commitment},
        "checks": verdicts,
        "decision": decision,
        "dp": dp_value,
        "times": {
            "submitted": _time(submitted, "submitted"),
            "released": _time(released, "released"),
        },
    }
    if audit_head is not None:
        predicate["audit"] = {"seq": audit_head.seq, "hash": audit_head.hash}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": MODEL_NAME, "digest": {"sha256": model_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign_envelope(
    payload: bytes, signing_key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE
) -> dict[str, Any]:
    """A DSSE envelope of `payload`, signed over its PAE."""
    sig = signing_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": _b64encode(payload),
        "signatures": [{"keyid": key_id(signing_key), "sig": _b64encode(sig)}],
    }


def make_attestation(
    *,
    signing_key: Ed25519PrivateKey,
    model_sha256: str,
    algorithm_sha256: str,
    policy_name: str,
    policy_sha256: str,
    dataset_commitment: str,
    checks: Sequence[Mapping[str, Any]],
    decision: str,
    dp: Mapping[str, Any] | None,
    submitted: datetime | str,
    released: datetime | str,
    job_id: str,
    audit_head: LogHead | None = None,
) -> dict[str, Any]:
    """The signed release attestation: a DSSE envelope around the in-toto Statement."""
    statement = make_statement(
        model_sha256=model_sha256,
        algorithm_sha256=algorithm_sha256,
        policy_name=policy_name,
        policy_sha256=policy_sha256,
        dataset_commitment=dataset_commitment,
        checks=checks,
        decision=decision,
        dp=dp,
        submitted=submitted,
        released=released,
        job_id=job_id,
        audit_head=audit_head,
    )
    return sign_envelope(canonical_json(statement), signing_key)


def _field(report: Mapping[str, Any], *path: str) -> Any:
    value: Any = report
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            raise InvalidInput(f"report has no {'.'.join(path)}; cannot attest the release")
        value = value[name]
    return value


def attest_report(
    report: Mapping[str, Any],
    model_path: Path,
    signing_key: Ed25519PrivateKey,
    *,
    dataset_sha256: str,
    submitted: datetime | str,
    released: datetime | str,
    audit_head: LogHead | None = None,
) -> tuple[dict[str, Any], DatasetCommitment]:
    """Attest a released job from its report (report.json as a dict) and model file.

    The model file is hashed again (streamed) and must match the report's sha256.
    Returns the envelope and the dataset commitment, whose `opening()` goes to the
    data owner only.
    """
    model_sha256 = sha256_file(model_path)
    if _field(report, "model", "sha256") != model_sha256:
        raise InvalidInput(
            f"{model_path} has sha256 {model_sha256} but the report names "
            f"{_field(report, 'model', 'sha256')}; refusing to attest a model the report "
            "does not describe"
        )
    checks: list[Mapping[str, Any]] = []
    gate = report.get("gate") or {}
    if isinstance(gate, Mapping) and "verdict" in gate:
        checks.append({"name": "egress_gate", "verdict": gate["verdict"]})
    checks.extend(report.get("checks") or [])
    commitment = commit_dataset(dataset_sha256)
    envelope = make_attestation(
        signing_key=signing_key,
        model_sha256=model_sha256,
        algorithm_sha256=_field(report, "algorithm", "sha256"),
        policy_name=_field(report, "policy", "name"),
        policy_sha256=_field(report, "policy", "sha256"),
        dataset_commitment=commitment.commitment,
        checks=checks,
        decision=_field(report, "decision"),
        dp=report.get("dp"),
        submitted=submitted,
        released=released,
        job_id=_field(report, "job_id"),
        audit_head=audit_head,
    )
    return envelope, commitment


# ------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Finding:
    """One step of verification: `check` is envelope, payload_type, signature,
    statement, subject or policy."""

    check: str
    ok: bool
    detail: str


@dataclass
class AttestationCheck:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key_id: str | None = None
    statement: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.statement is not None and all(f.ok for f in self.findings)

    @property
    def problems(self) -> list[str]:
        return [f"{f.check}: {f.detail}" for f in self.findings if not f.ok]

    def audit_anchor(self) -> LogHead | None:
        """The audit-log head the attestation records (only once `ok`)."""
        audit = (self.statement or {}).get("predicate", {}).get("audit")
        return LogHead(audit["seq"], audit["hash"]) if self.ok and audit else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "key_id": self.key_id,
            "findings": [asdict(f) for f in self.findings],
            "notes": list(self.notes),
            "statement": self.statement,
        }

    def summary(self) -> str:
        head = "attestation verified" if self.ok else "attestation NOT verified"
        lines = [head] + [
            f"  {'ok  ' if f.ok else 'FAIL'} {f.check}: {f.detail}" for f in self.findings
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _predicate_problems(predicate: object) -> list[str]:
    if not isinstance(predicate, dict):
        return ["predicate must be an object"]
    problems = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need(isinstance(predicate.get("job_id"), str), "predicate.job_id must be a string")
    algorithm = predicate.get("algorithm")
    need(
        isinstance(algorithm, dict) and is_sha256_hex(algorithm.get("sha256")),
        "predicate.algorithm.sha256 must be a sha256",
    )
    policy = predicate.get("policy")
    need(
        isinstance(policy, dict)
        and isinstance(policy.get("name"), str)
        and is_sha256_hex(policy.get("sha256")),
        "predicate.policy must hold a name and a sha256",
    )
    dataset = predicate.get("dataset")
    need(
        isinstance(dataset, dict)
        and dataset.get("scheme") == COMMITMENT_SCHEME
        and is_sha256_hex(dataset.get("commitment")),
        f"predicate.dataset must hold a {COMMITMENT_SCHEME} commitment",
    )
    checks = predicate.get("checks")
    need(
        isinstance(checks, list)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("verdict"), str)
            for c in checks
        ),
        "predicate.checks must be a list of {name, verdict}",
    )
    need(
        predicate.get("decision") in RELEASED,
        f"predicate.decision must be one of {', '.join(RELEASED)}",
    )
    dp = predicate.get("dp")
    need(
        dp is None
        or (
            isinstance(dp, dict)
            and all(type(dp.get(k)) in (int, float) for k in ("epsilon", "delta"))
        ),
        "predicate.dp must be null or {epsilon, delta}",
    )
    times = predicate.get("times")
    need(
        isinstance(times, dict)
        and is_utc_time(times.get("submitted"))
        and is_utc_time(times.get("released")),
        "predicate.times must hold RFC 3339 UTC submitted and released",
    )
    audit = predicate.get("audit")
    need(
        audit is None
        or (
            isinstance(audit, dict)
            and type(audit.get("seq")) is int
            and is_sha256_hex(audit.get("hash"))
        ),
        "predicate.audit must be {seq, hash} when present",
    )
    return problems


def _load_envelope(envelope: Mapping[str, Any] | bytes | str) -> tuple[Any, str | None]:
    if isinstance(envelope, Mapping):
        return envelope, None
    if len(envelope) > MAX_ENVELOPE_BYTES:
        return None, f"larger than {MAX_ENVELOPE_BYTES} bytes; not a release attestation"
    try:
        return json.loads(envelope), None
    except ValueError as error:
        return None, f"not JSON ({error})"


def read_envelope(path: Path) -> bytes:
    """The bytes of an attestation file, bounded (a verifier never reads a huge file whole)."""
    with open_regular(path, "attestation") as handle:
        return handle.read(MAX_ENVELOPE_BYTES + 1)


class _Verification:
    def __init__(self) -> None:
        self.result = AttestationCheck()

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.result.findings.append(Finding(check, ok, detail))
        return ok


Signatures = list[tuple[str | None, bytes]]


def _check_envelope(run: _Verification, value: Any) -> tuple[str, bytes, Signatures] | None:
    """Parse the DSSE envelope; None (and a finding) when its shape is wrong."""
    if not isinstance(value, Mapping):
        run.add("envelope", False, "a DSSE envelope is a JSON object")
        return None
    problems = []
    payload_type = value.get("payloadType")
    if not isinstance(payload_type, str):
        problems.append("payloadType must be a string")
    payload = value.get("payload")
    body = b""
    if not isinstance(payload, str):
        problems.append("payload must be a base64 string")
    else:
        try:
            body = _b64decode(payload)
        except (binascii.Error, ValueError):
            problems.append("payload is not valid base64")
    signatures = value.get("signatures")
    parsed: Signatures = []
    if not isinstance(signatures, list) or not signatures:
        problems.append("signatures must be a non-empty list (the attestation is unsigned)")
    else:
        for index, entry in enumerate(signatures):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("sig"), str):
                problems.append(f"signatures[{index}] must be an object with a base64 sig")
                continue
            keyid = entry.get("keyid")
            if keyid is not None and not isinstance(keyid, str):
                problems.append(f"signatures[{index}].keyid must be a string")
                continue
            try:
                parsed.append((keyid or None, _b64decode(entry["sig"])))
            except (binascii.Error, ValueError):
                problems.append(f"signatures[{index}].sig is not valid base64")
    if problems:
        run.add("envelope", False, "; ".join(problems))
        return None
    run.add("envelope", True, f"DSSE envelope with {len(parsed)} signature(s)")
    assert isinstance(payload_type, str)
    return payload_type, body, parsed


def _check_signature(
    run: _Verification,
    payload_type: str,
    body: bytes,
    signatures: Signatures,
    public_key: Ed25519PublicKey,
) -> bool:
    expected = key_id(public_key)
    message = pae(payload_type, body)
    for keyid, sig in signatures:
        try:
            public_key.verify(sig, message)
        except (InvalidSignature, ValueError):
            continue
        run.result.key_id = expected
        if keyid is not None and keyid != expected:
            run.result.notes.append(
                f"the signature verifies with key {expected}, but its keyid says {keyid}: "
                "keyids are unsigned hints (DSSE), so the signature counts, but the envelope "
                "was edited after signing or made by another tool"
            )
        return run.add("signature", True, f"valid Ed25519 signature by key {expected}")
    named = {k for k, _ in signatures if k is not None}
    if expected in named:
        detail = (
            f"the signature by key {expected} does not verify: the payload, the payloadType "
            "or the signature was altered after signing"
        )
    elif named and len(named) == len(signatures):
        detail = (
            f"signed by key {', '.join(sorted(named))}, not by the given key {expected}: "
            "pass the signer's public key (--key), or the attestation is not from this platform"
        )
    else:
        detail = (
            f"no signature verifies with key {expected}: the attestation was altered, or "
            "signed by another key"
        )
    return run.add("signature", False, detail)


class _Ambiguous(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Ambiguous(f"duplicate key {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise _Ambiguous(f"{name} is not JSON")


def _check_statement(run: _Verification, body: bytes) -> dict[str, Any] | None:
    try:
        # Duplicate keys are refused: parsers disagree on which one wins, and a signed
        # payload must mean the same thing to every verifier.
        statement = json.loads(
            body.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except _Ambiguous as error:
        run.add("statement", False, f"the payload is ambiguous JSON: {error}")
        return None
    except (UnicodeDecodeError, ValueError):
        run.add("statement", False, "the payload is not UTF-8 JSON")
        return None
    if not isinstance(statement, dict):
        run.add("statement", False, "the payload is not a JSON object")
        return None
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type is {statement.get('_type')!r}, expected {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(
            f"predicateType is {statement.get('predicateType')!r}; this verifier "
            f"understands {PREDICATE_TYPE}"
        )
    if _subject_digest(statement) is None:
        problems.append(f"subject must name {MODEL_NAME} with a sha256 digest")
    problems += _predicate_problems(statement.get("predicate"))
    if problems:
        run.add("statement", False, "; ".join(problems))
        return None
    predicate = statement["predicate"]
    run.add(
        "statement",
        True,
        f"release of job {predicate['job_id']}: decision {predicate['decision']}, "
        f"policy {predicate['policy']['name']}",
    )
    return statement


def _subject_digest(statement: Mapping[str, Any]) -> str | None:
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        return None
    for subject in subjects:
        if isinstance(subject, dict) and subject.get("name") == MODEL_NAME:
            digest = subject.get("digest")
            if isinstance(digest, dict) and is_sha256_hex(digest.get("sha256")):
                return str(digest["sha256"])
    return None


def verify_attestation(
    envelope: Mapping[str, Any] | bytes | str,
    public_key: Ed25519PublicKey,
    model_path: Path | None = None,
    expected_policy_sha256: str | None = None,
) -> AttestationCheck:
    """Check an attestation step by step; each failure says what is wrong.

    Order: envelope shape, payload type, signature (stops there if either fails:
    nothing unsigned is interpreted), statement, subject digest against `model_path`
    (hashed streaming), policy hash. `statement` is set only when everything holds.
    Raises only for a model file that cannot be read (NotFound/InvalidInput).
    """
    run = _Verification()
    value, error = _load_envelope(envelope)
    if error is not None:
        run.add("envelope", False, error)
        return run.result
    parsed = _check_envelope(run, value)
    if parsed is None:
        return run.result
    payload_type, body, signatures = parsed
    type_ok = run.add(
        "payload_type",
        payload_type == PAYLOAD_TYPE,
        f"payloadType is {payload_type}"
        if payload_type == PAYLOAD_TYPE
        else f"payloadType is {payload_type!r}, expected {PAYLOAD_TYPE}",
    )
    signed = _check_signature(run, payload_type, body, signatures, public_key)
    if not (type_ok and signed):
        return run.result
    statement = _check_statement(run, body)
    if statement is None:
        return run.result
    attested = _subject_digest(statement)
    if model_path is None:
        run.result.notes.append(
            f"the model file was not checked: give it (--model) to compare its sha256 with "
            f"the attested {attested}"
        )
    else:
        actual = sha256_file(model_path)
        run.add(
            "subject",
            actual == attested,
            f"{model_path} has the attested sha256 {actual}"
            if actual == attested
            else f"{model_path} has sha256 {actual}, but the attestation's subject "
            f"{MODEL_NAME} has sha256 {attested}: this is not the attested model",
        )
    if expected_policy_sha256 is not None:
        policy = statement["predicate"]["policy"]
        run.add(
            "policy",
            policy["sha256"] == expected_policy_sha256,
            f"policy {policy['name']} has the expected sha256"
            if policy["sha256"] == expected_policy_sha256
            else f"the model was released under policy {policy['name']} with sha256 "
            f"{policy['sha256']}, not the expected {expected_policy_sha256} (another policy, "
            "or a changed version of it)",
        )
    if all(f.ok for f in run.result.findings):
        run.result.statement = statement
    return run.result
