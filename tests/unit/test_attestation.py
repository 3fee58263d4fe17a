"""Release attestations and signing keys: every tamper is caught and explained."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.audit import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    AuditLog,
    attest_report,
    check_dataset_opening,
    commit_dataset,
    default_public_key,
    key_id,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    make_attestation,
    pae,
    public_key_pem,
    read_envelope,
    save_public_key,
    save_signing_key,
    sha256_file,
    verify_attestation,
    verify_log,
)
from sandbox.audit.attestation import sign_envelope
from sandbox.errors import FailedPrecondition, InvalidInput, NotFound

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several hashing chunks
    return path


DATASET_SHA = hashlib.sha256(b"the private dataset").hexdigest()
POLICY_SHA = "a1" * 32
ALGORITHM_SHA = "b2" * 32


def attestation_args(model: Path, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model_sha256": sha256_file(model),
        "algorithm_sha256": ALGORITHM_SHA,
        "policy_name": "default",
        "policy_sha256": POLICY_SHA,
        "dataset_commitment": commit_dataset(DATASET_SHA).commitment,
        "checks": [{"name": "egress_gate", "verdict": "pass"}, {"name": "lsb", "verdict": "pass"}],
        "decision": "released_dp",
        "dp": {"epsilon": 3.0, "delta": 1e-5},
        "submitted": "2025-01-31T12:00:00.000000Z",
        "released": "2025-01-31T12:30:00.000000Z",
        "job_id": "job-42",
    }
    args.update(changes)
    return args


@pytest.fixture
def envelope(key: Ed25519PrivateKey, model: Path) -> dict[str, Any]:
    return make_attestation(signing_key=key, **attestation_args(model))


def statement_of(envelope: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return statement


def resigned(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """As if the signer itself had produced this statement."""
    return sign_envelope(json.dumps(statement).encode(), key)


def failures(check: Any) -> dict[str, str]:
    return {f.check: f.detail for f in check.findings if not f.ok}


# ------------------------------------------------------------------------ the format


def test_a_fresh_attestation_verifies_and_returns_the_statement(
    envelope: dict[str, Any], key: Ed25519PrivateKey, model: Path
) -> None:
    check = verify_attestation(envelope, key.public_key(), model, POLICY_SHA)
    assert check.ok, check.summary()
    assert [f.check for f in check.findings] == [
        "envelope",
        "payload_type",
        "signature",
        "statement",
        "subject",
        "policy",
    ]
    assert check.key_id == key_id(key)
    assert check.notes == []
    statement = check.statement
    assert statement is not None
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://sandbox.example/release/v1"
    assert statement["subject"] == [
        {"name": "model.safetensors", "digest": {"sha256": sha256_file(model)}}
    ]
    predicate = statement["predicate"]
    assert predicate["policy"] == {"name": "default", "sha256": POLICY_SHA}
    assert predicate["algorithm"] == {"sha256": ALGORITHM_SHA}
    assert predicate["checks"][1] == {"name": "lsb", "verdict": "pass"}
    assert predicate["dp"] == {"epsilon": 3.0, "delta": 1e-5}
    assert predicate["times"] == {
        "submitted": "2025-01-31T12:00:00.000000Z",
        "released": "2025-01-31T12:30:00.000000Z",
    }
    assert (predicate["decision"], predicate["job_id"]) == ("released_dp", "job-42")
    assert "verified" in check.summary()
    assert json.loads(json.dumps(check.to_dict()))["ok"] is True


def test_the_envelope_is_dsse_signed_over_the_pae(
    envelope: dict[str, Any], key: Ed25519PrivateKey
) -> None:
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    body = base64.b64decode(envelope["payload"], validate=True)
    [signature] = envelope["signatures"]
    assert signature["keyid"] == key_id(key)
    # PAE written out independently: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
    expected = b"DSSEv1 28 application/vnd.in-toto+json " + str(len(body)).encode() + b" " + body
    assert pae(PAYLOAD_TYPE, body) == expected
    key.public_key().verify(base64.b64decode(signature["sig"]), expected)


def test_pae_matches_the_dsse_spec_examples() -> None:
    # protocol.md's test vector, and its corner cases (UTF-8 byte lengths, empty body).
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("application/vnd.exämple+json", b"{}") == (
        b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 {}"
    )
    assert pae(PAYLOAD_TYPE, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


# DSSE's published Ed25519 test vectors (secure-systems-lab/dsse, testvectors/vectors.json);
# key A is RFC 8032's first test key.
DSSE_KEY_A = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
DSSE_PAYLOAD = "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ=="
DSSE_SIG = (
    "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
)
DSSE_URLSAFE = (
    "-_-_Pj8=",
    "P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==",
)


def test_signatures_interoperate_with_the_dsse_test_vectors() -> None:
    public = Ed25519PrivateKey.from_private_bytes(DSSE_KEY_A).public_key()
    good = {
        "payloadType": PAYLOAD_TYPE,
        "payload": DSSE_PAYLOAD,
        "signatures": [{"sig": DSSE_SIG, "keyid": "A"}],
    }
    check = verify_attestation(good, public)
    assert failures(check).keys() == {"statement"}  # signed fine; not a release statement
    assert "predicateType is None" in failures(check)["statement"]
    payload, sig = DSSE_URLSAFE  # URL-safe base64 must be accepted too
    check = verify_attestation(
        {"payloadType": PAYLOAD_TYPE, "payload": payload, "signatures": [{"sig": sig}]}, public
    )
    assert "signature" not in failures(check)
    swapped = {**good, "payloadType": "application/vnd.example.other+json"}
    assert {"payload_type", "signature"} <= failures(verify_attestation(swapped, public)).keys()


# ------------------------------------------------------------------------ tampering


def test_altered_payload_bytes(envelope: dict[str, Any], key: Ed25519PrivateKey) -> None:
    body = base64.b64decode(envelope["payload"]).replace(b"released_dp", b"released_xx")
    envelope["payload"] = base64.b64encode(body).decode()
    check = verify_attestation(envelope, key.public_key())
    assert not check.ok
    assert check.statement is None
    assert failures(check) == {
        "signature": f"the signature by key {key_id(key)} does not verify: the payload, the "
        "payloadType or the signature was altered after signing"
    }


def test_altered_signature(envelope: dict[str, Any], key: Ed25519PrivateKey) -> None:
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 0x40
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    check = verify_attestation(envelope, key.public_key())
    assert "does not verify" in failures(check)["signature"]


def test_altered_keyid_is_noted_but_cannot_invalidate_a_good_signature(
    envelope: dict[str, Any], key: Ed25519PrivateKey, model: Path
) -> None:
    envelope["signatures"][0]["keyid"] = "f0" * 32
    check = verify_attestation(envelope, key.public_key(), model)
    assert check.ok  # DSSE: keyids are unsigned hints, never a security decision
    assert check.notes == [
        f"the signature verifies with key {key_id(key)}, but its keyid says {'f0' * 32}: "
        "keyids are unsigned hints (DSSE), so the signature counts, but the envelope was "
        "edited after signing or made by another tool"
    ]


def test_wrong_key(
    envelope: dict[str, Any], key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    check = verify_attestation(envelope, other_key.public_key())
    assert failures(check) == {
        "signature": f"signed by key {key_id(key)}, not by the given key {key_id(other_key)}: "
        "pass the signer's public key (--key), or the attestation is not from this platform"
    }


def test_no_keyid_and_a_bad_signature(envelope: dict[str, Any], key: Ed25519PrivateKey) -> None:
    del envelope["signatures"][0]["keyid"]
    envelope["payload"] = base64.b64encode(b"{}").decode()
    check = verify_attestation(envelope, key.public_key())
    assert failures(check)["signature"].startswith(f"no signature verifies with key {key_id(key)}")


def test_altered_subject_digest(
    envelope: dict[str, Any], key: Ed25519PrivateKey, model: Path
) -> None:
    statement = statement_of(envelope)
    statement["subject"][0]["digest"]["sha256"] = "00" * 32
    unsigned = {**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    assert (
        "does not verify"
        in failures(verify_attestation(unsigned, key.public_key(), model))["signature"]
    )
    check = verify_attestation(resigned(statement, key), key.public_key(), model)
    assert failures(check) == {
        "subject": f"{model} has sha256 {sha256_file(model)}, but the attestation's subject "
        f"model.safetensors has sha256 {'00' * 32}: this is not the attested model"
    }
    assert check.statement is None


def test_a_different_model_file(
    envelope: dict[str, Any], key: Ed25519PrivateKey, model: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # one bit in the last chunk
    other.write_bytes(bytes(data))
    check = verify_attestation(envelope, key.public_key(), other)
    assert failures(check)["subject"].endswith("this is not the attested model")
    assert sha256_file(other) in failures(check)["subject"]
    with pytest.raises(NotFound, match="does not exist"):
        verify_attestation(envelope, key.public_key(), tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidInput, match="is not a regular file"):
        verify_attestation(envelope, key.public_key(), tmp_path / "fifo")


def test_wrong_policy_hash(envelope: dict[str, Any], key: Ed25519PrivateKey) -> None:
    check = verify_attestation(envelope, key.public_key(), expected_policy_sha256="c3" * 32)
    assert failures(check) == {
        "policy": f"the model was released under policy default with sha256 {POLICY_SHA}, not "
        f"the expected {'c3' * 32} (another policy, or a changed version of it)"
    }


def test_without_a_model_file_the_subject_is_not_checked_and_says_so(
    envelope: dict[str, Any], key: Ed25519PrivateKey, model: Path
) -> None:
    check = verify_attestation(envelope, key.public_key())
    assert check.ok
    assert check.notes == [
        "the model file was not checked: give it (--model) to compare its sha256 with the "
        f"attested {sha256_file(model)}"
    ]


def test_altered_payload_type(envelope: dict[str, Any], key: Ed25519PrivateKey) -> None:
    envelope["payloadType"] = "application/json"
    problems = failures(verify_attestation(envelope, key.public_key()))
    assert problems["payload_type"] == (
        "payloadType is 'application/json', expected application/vnd.in-toto+json"
    )
    assert "does not verify" in problems["signature"]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            {"_type": "https://in-toto.io/Statement/v0.1"},
            "_type is 'https://in-toto.io/Statement/v0.1'",
        ),
        ({"predicateType": "https://slsa.dev/provenance/v1"}, "this verifier understands"),
        ({"subject": []}, "subject must name model.safetensors with a sha256 digest"),
        ({"predicate": []}, "predicate must be an object"),
    ],
)
def test_signed_but_wrong_statements_are_explained(
    envelope: dict[str, Any], key: Ed25519PrivateKey, edit: dict[str, Any], fragment: str
) -> None:
    statement = {**statement_of(envelope), **edit}
    check = verify_attestation(resigned(statement, key), key.public_key())
    assert fragment in failures(check)["statement"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff", "the payload is not UTF-8 JSON"),
        (b"[1]", "the payload is not a JSON object"),
        (b'{"_type":"a","_type":"b"}', "ambiguous JSON: duplicate key '_type'"),
        (b'{"x":NaN}', "ambiguous JSON: NaN is not JSON"),
    ],
)
def test_signed_payloads_that_are_not_one_clear_statement(
    key: Ed25519PrivateKey, payload: bytes, fragment: str
) -> None:
    check = verify_attestation(sign_envelope(payload, key), key.public_key())
    assert list(failures(check)) == ["statement"]
    assert fragment in failures(check)["statement"]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("decision", "rejected", "predicate.decision must be one of"),
        ("dp", {"epsilon": "3"}, "predicate.dp must be null or {epsilon, delta}"),
        ("times", {"submitted": "yesterday"}, "predicate.times must hold"),
        ("dataset", {"commitment": "00" * 32}, "hmac-sha256-salted/v1 commitment"),
        ("policy", {"name": "default"}, "predicate.policy must hold a name and a sha256"),
        ("checks", [{"name": "x"}], "predicate.checks must be a list of {name, verdict}"),
        ("audit", {"seq": "1"}, "predicate.audit must be {seq, hash}"),
    ],
)
def test_malformed_predicates_are_explained(
    envelope: dict[str, Any], key: Ed25519PrivateKey, field: str, value: Any, fragment: str
) -> None:
    statement = statement_of(envelope)
    statement["predicate"][field] = value
    check = verify_attestation(resigned(statement, key), key.public_key())
    assert fragment in failures(check)["statement"]


@pytest.mark.parametrize(
    ("envelope", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"x" * (1024 * 1024 + 1), "larger than 1048576 bytes"),
        ([], "a DSSE envelope is a JSON object"),
        ({"payload": "", "signatures": [{"sig": ""}]}, "payloadType must be a string"),
        ({"payloadType": PAYLOAD_TYPE, "payload": "%%%", "signatures": []}, "not valid base64"),
        (
            {"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": []},
            "the attestation is unsigned",
        ),
        (
            {"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": [{"sig": "%"}]},
            "sig is not valid base64",
        ),
        (
            {"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": [{"keyid": 1, "sig": ""}]},
            "keyid must be a string",
        ),
        (
            {"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": ["x"]},
            "must be an object with a base64 sig",
        ),
    ],
)
def test_malformed_envelopes_are_explained(
    key: Ed25519PrivateKey, envelope: Any, fragment: str
) -> None:
    if isinstance(envelope, list):
        envelope = json.dumps(envelope).encode()
    check = verify_attestation(envelope, key.public_key())
    assert not check.ok
    assert fragment in failures(check)["envelope"]


def test_envelope_as_bytes_text_or_file(
    envelope: dict[str, Any], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    text = json.dumps(envelope, indent=2)
    assert verify_attestation(text, key.public_key()).ok
    assert verify_attestation(text.encode(), key.public_key()).ok
    path = tmp_path / "attestation.json"
    path.write_text(text)
    assert verify_attestation(read_envelope(path), key.public_key()).ok
    path.write_bytes(b" " * (3 << 20))  # read bounded, then refused as too large
    assert len(read_envelope(path)) == (1 << 20) + 1
    assert (
        "larger than"
        in failures(verify_attestation(read_envelope(path), key.public_key()))["envelope"]
    )
    with pytest.raises(NotFound, match="attestation .* does not exist"):
        read_envelope(tmp_path / "missing.json")


# ------------------------------------------------------------------- making (inputs)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"decision": "rejected"}, "releases no model, so there is nothing to attest"),
        ({"model_sha256": "XYZ"}, "model_sha256 must be 64 lowercase hex digits"),
        ({"policy_sha256": "A1" * 32}, "policy_sha256 must be 64 lowercase hex digits"),
        ({"dp": None}, "decision released_dp needs dp"),
        ({"dp": {"epsilon": float("nan"), "delta": 0.0}}, "finite epsilon"),
        ({"dp": {"epsilon": 1.0, "delta": 1.0}}, "0 <= delta < 1"),
        ({"submitted": "2025-01-31 12:00"}, "submitted must be RFC 3339 UTC"),
        ({"checks": [{"name": "lsb"}]}, "each check needs a string name and verdict"),
        ({"job_id": ""}, "job_id and policy_name must be non-empty"),
    ],
)
def test_bad_inputs_are_refused(
    key: Ed25519PrivateKey, model: Path, changes: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        make_attestation(signing_key=key, **attestation_args(model, **changes))


def test_times_may_be_aware_datetimes_but_not_naive_ones(
    key: Ed25519PrivateKey, model: Path
) -> None:
    local = datetime(2025, 1, 31, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    envelope = make_attestation(
        signing_key=key, **attestation_args(model, submitted=local, released=local)
    )
    assert statement_of(envelope)["predicate"]["times"]["submitted"] == (
        "2025-01-31T12:00:00.000000Z"
    )
    with pytest.raises(InvalidInput, match="timezone-aware"):
        make_attestation(
            signing_key=key, **attestation_args(model, submitted=datetime(2025, 1, 31))
        )


# ------------------------------------------------------------------- dataset commitment


def test_a_dataset_commitment_hides_the_dataset_and_opens_with_salt_and_hash() -> None:
    first, second = commit_dataset(DATASET_SHA), commit_dataset(DATASET_SHA)
    assert first.commitment != second.commitment  # the same dataset twice is unlinkable
    assert len(first.salt) == 32
    assert check_dataset_opening(first.commitment, first.salt, DATASET_SHA)
    assert check_dataset_opening(first.commitment, first.salt.hex(), DATASET_SHA)
    assert not check_dataset_opening(first.commitment, second.salt, DATASET_SHA)
    assert not check_dataset_opening(first.commitment, first.salt, "00" * 32)
    assert not check_dataset_opening(first.commitment, "not hex", DATASET_SHA)
    assert not check_dataset_opening(first.commitment, b"short", DATASET_SHA)
    opening = first.opening()
    assert opening == {
        "scheme": "hmac-sha256-salted/v1",
        "commitment": first.commitment,
        "salt": first.salt.hex(),
        "dataset_sha256": DATASET_SHA,
    }
    assert check_dataset_opening(opening["commitment"], opening["salt"], opening["dataset_sha256"])
    with pytest.raises(InvalidInput, match="32 random bytes"):
        commit_dataset(DATASET_SHA, salt=b"0" * 16)


def test_the_attestation_reveals_neither_the_dataset_hash_nor_the_salt(
    key: Ed25519PrivateKey, model: Path
) -> None:
    commitment = commit_dataset(DATASET_SHA)
    envelope = make_attestation(
        signing_key=key, **attestation_args(model, dataset_commitment=commitment.commitment)
    )
    text = json.dumps(envelope) + base64.b64decode(envelope["payload"]).decode()
    assert DATASET_SHA not in text
    assert commitment.salt.hex() not in text
    attested = statement_of(envelope)["predicate"]["dataset"]["commitment"]
    assert check_dataset_opening(attested, commitment.salt, DATASET_SHA)


# ---------------------------------------------------------------- from a report.json


def report_for(model: Path) -> dict[str, Any]:
    return {
        "job_id": "job-7",
        "policy": {"name": "strict", "sha256": POLICY_SHA},
        "decision": "released",
        "reasons": ["the model passed the egress gate and was released"],
        "algorithm": {"name": "mlp", "version": "1", "sha256": ALGORITHM_SHA},
        "gate": {"verdict": "pass", "notes": []},
        "checks": [{"name": "weight_entropy", "verdict": "pass", "statistic": 0.1}],
        "dp": None,
        "model": {"sha256": sha256_file(model), "bytes": model.stat().st_size},
    }


def test_attest_a_report_and_anchor_the_audit_log(
    key: Ed25519PrivateKey, model: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, key) as log:
        log.append("decision", actor="orchestrator", subject={"job": "job-7"})
        head = log.head()
    envelope, commitment = attest_report(
        report_for(model),
        model,
        key,
        dataset_sha256=DATASET_SHA,
        submitted="2025-01-31T12:00:00Z",
        released="2025-01-31T12:30:00Z",
        audit_head=head,
    )
    check = verify_attestation(envelope, key.public_key(), model, POLICY_SHA)
    assert check.ok, check.summary()
    assert check.statement is not None
    predicate = check.statement["predicate"]
    assert predicate["checks"] == [
        {"name": "egress_gate", "verdict": "pass"},
        {"name": "weight_entropy", "verdict": "pass"},
    ]
    assert (predicate["decision"], predicate["dp"], predicate["job_id"]) == (
        "released",
        None,
        "job-7",
    )
    assert check_dataset_opening(predicate["dataset"]["commitment"], commitment.salt, DATASET_SHA)
    anchor = check.audit_anchor()
    assert anchor == head
    assert verify_log(log_path, key.public_key(), anchor=anchor).ok
    log_path.write_bytes(b"")  # the log is emptied afterwards: the anchor shows it
    assert not verify_log(log_path, key.public_key(), anchor=anchor).ok


def test_attest_report_refuses_a_model_the_report_does_not_describe(
    key: Ed25519PrivateKey, model: Path
) -> None:
    report = report_for(model)
    report["model"]["sha256"] = "00" * 32
    with pytest.raises(InvalidInput, match="refusing to attest a model the report does not"):
        attest_report(
            report,
            model,
            key,
            dataset_sha256=DATASET_SHA,
            submitted="2025-01-31T12:00:00Z",
            released="2025-01-31T12:00:00Z",
        )
    report = report_for(model)
    del report["algorithm"]
    with pytest.raises(InvalidInput, match="report has no algorithm.sha256"):
        attest_report(
            report,
            model,
            key,
            dataset_sha256=DATASET_SHA,
            submitted="2025-01-31T12:00:00Z",
            released="2025-01-31T12:00:00Z",
        )


# ------------------------------------------------------------------------------ keys


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_a_created_key_is_exactly_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = tmp_path / "keys" / "signing-key.pem"
        key = load_or_create_signing_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert key_id(load_or_create_signing_key(path)) == key_id(key)  # loaded, not replaced
    assert [p.name for p in path.parent.iterdir()] == ["signing-key.pem"]  # no temp left


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    ids: list[str] = []

    def create() -> None:
        ids.append(key_id(load_or_create_signing_key(path)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert ids[0] == key_id(load_signing_key(path))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_readable_by_group_or_others_is_refused_with_the_fix(
    tmp_path: Path, key: Ed25519PrivateKey, mode: int
) -> None:
    path = tmp_path / "signing-key.pem"
    save_signing_key(key, path)
    os.chmod(path, mode)
    with pytest.raises(FailedPrecondition) as caught:
        load_signing_key(path)
    assert f"(mode {mode:04o})" in caught.value.message
    assert f"chmod 600 {path}" in caught.value.message
    os.chmod(path, 0o600)
    assert key_id(load_signing_key(path)) == key_id(key)


def test_key_files_that_are_not_what_they_claim(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    real = tmp_path / "real.pem"
    save_signing_key(key, real)
    link = tmp_path / "link.pem"
    link.symlink_to(real)
    with pytest.raises(InvalidInput, match="symbolic link"):
        load_signing_key(link)
    with pytest.raises(FailedPrecondition, match="refusing to overwrite"):
        save_signing_key(key, real)
    with pytest.raises(NotFound):
        load_signing_key(tmp_path / "absent.pem")
    ec_path = tmp_path / "ec.pem"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(ec_path, 0o600)
    with pytest.raises(InvalidInput, match="Ed25519 keys only"):
        load_signing_key(ec_path)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    os.chmod(encrypted, 0o600)
    with pytest.raises(InvalidInput, match="encrypted private key"):
        load_signing_key(encrypted)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    os.chmod(garbage, 0o600)
    with pytest.raises(InvalidInput, match="not a PEM private key"):
        load_signing_key(garbage)
    with pytest.raises(InvalidInput, match="not a regular file"):
        load_signing_key(tmp_path)


def test_public_key_export_and_key_id(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "signing-key.pub.pem"
    save_public_key(key, path)
    assert path.read_bytes() == public_key_pem(key)
    assert path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = load_public_key(path)
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(loaded) == key_id(key) == hashlib.sha256(raw).hexdigest()
    private = tmp_path / "private.pem"
    save_signing_key(key, private)
    with pytest.raises(InvalidInput, match="holds a private key; give the public key"):
        load_public_key(private)


def test_default_key_locations_follow_the_environment(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path))
    monkeypatch.delenv("SANDBOX_SIGNING_KEY", raising=False)
    with pytest.raises(NotFound, match="pass the platform's published public key with --key"):
        default_public_key()
    created = load_or_create_signing_key()
    assert (tmp_path / "signing-key.pem").is_file()
    assert key_id(default_public_key()) == key_id(created)
    monkeypatch.setenv("SANDBOX_SIGNING_KEY", str(tmp_path / "other.pem"))
    save_signing_key(key, tmp_path / "other.pem")
    assert key_id(default_public_key()) == key_id(key)
