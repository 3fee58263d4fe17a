"""The audit log: every tamper is found and named; appends are durable and serialised."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.audit import AuditLog, LogHead, VerifyResult, key_id, verify_log
from sandbox.audit.keys import load_signing_key, save_signing_key
from sandbox.audit.log import GENESIS, MAX_ENTRY_BYTES, checkpoint_message
from sandbox.errors import FailedPrecondition, InvalidInput, NotFound

# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def canonical(value: Any) -> bytes:
    """Written out here, independently of the code under test."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rehash(value: dict[str, Any]) -> dict[str, Any]:
    """What a forger without the key can do: make an entry's own hash consistent."""
    body = {k: v for k, v in value.items() if k != "hash"}
    return {**body, "hash": hashlib.sha256(canonical(body)).hexdigest()}


def build(
    path: Path, key: Ed25519PrivateKey, n: int, *, every: int = 100, close: bool = True
) -> Path:
    log = AuditLog(path, key, checkpoint_every=every)
    for i in range(n):
        log.append(
            "job_step",
            actor="orchestrator",
            subject={"job": f"job-{i // 10}"},
            data={"step": i, "note": "é ü ✓", "ok": i % 2 == 0, "nested": {"x": [1, 2.5, None]}},
        )
    if close:
        log.close()
    return path


def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


def put(path: Path, values: list[dict[str, Any]]) -> None:
    write_lines(path, [canonical(v) for v in values])


def messages(result: VerifyResult) -> list[str]:
    return [p.message for p in result.errors]


def only_errors(result: VerifyResult) -> set[tuple[int, str]]:
    return {(p.line, p.code) for p in result.errors}


# --------------------------------------------------------------------------- the format


def test_a_valid_log_verifies_with_checkpoints_every_n_entries(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = build(tmp_path / "audit.jsonl", key, 250)
    values = entries(path)
    kinds = [v["kind"] for v in values]
    # 100 entries, checkpoint (seq 100), 100 entries, checkpoint (201), 50, close (252).
    assert [i for i, k in enumerate(kinds) if k == "checkpoint"] == [100, 201, 252]
    assert len(values) == 253
    result = verify_log(path, key.public_key())
    assert result.ok, result.summary()
    assert result.warnings == []
    assert (result.entries, result.checkpoints, result.signed_through) == (253, 3, 252)
    assert result.head == LogHead(252, values[-1]["hash"])
    assert (path.stat().st_mode & 0o777) == 0o600


def test_entry_fields_hash_and_chain_follow_the_documented_format(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = build(tmp_path / "audit.jsonl", key, 3)
    raw = read_lines(path)
    values = [json.loads(line) for line in raw]
    first = values[0]
    assert set(first) == {"seq", "time", "kind", "actor", "subject", "data", "prev", "hash"}
    assert first["prev"] == GENESIS == "0" * 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["time"])
    assert "é ü ✓".encode() in raw[0]  # UTF-8, not \u escapes
    for i, (line, value) in enumerate(zip(raw, values, strict=True)):
        assert value["seq"] == i
        assert line == canonical(value)
        body = {k: v for k, v in value.items() if k != "hash"}
        assert value["hash"] == hashlib.sha256(canonical(body)).hexdigest()
        if i:
            assert value["prev"] == values[i - 1]["hash"]
    checkpoint = values[-1]
    assert checkpoint["kind"] == "checkpoint"
    assert checkpoint["data"]["key_id"] == key_id(key)
    key.public_key().verify(
        base64.b64decode(checkpoint["data"]["sig"]), checkpoint_message(values[-2]["hash"])
    )


def test_writer_resumes_an_existing_log_and_keeps_counting_to_the_next_checkpoint(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, key, checkpoint_every=5)
    for _ in range(3):
        first.append("upload", actor="owner")
    second = AuditLog(path, key, checkpoint_every=5)  # another writer, same file
    second.append("approval", actor="owner")
    second.append("approval", actor="owner")  # the 5th entry: a checkpoint follows
    assert [v["kind"] for v in entries(path)][-1] == "checkpoint"
    entry = first.append("download", actor="provider")  # first catches up
    assert entry.seq == 6
    assert entry.prev == entries(path)[5]["hash"]
    first.close()
    second.close()  # nothing unsigned left: no second checkpoint
    kinds = [v["kind"] for v in entries(path)]
    assert kinds.count("checkpoint") == 2
    assert verify_log(path, key.public_key()).ok


def test_checkpoint_is_a_no_op_when_nothing_is_unsigned(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    with AuditLog(tmp_path / "a.jsonl", key) as log:
        assert log.checkpoint() is None
        assert log.head() is None
        log.append("upload", actor="owner")
        assert log.checkpoint() is not None
        assert log.checkpoint() is None
        assert log.head() == LogHead(1, entries(tmp_path / "a.jsonl")[1]["hash"])
    with pytest.raises(FailedPrecondition, match="closed"):
        log.append("upload", actor="owner")


def test_each_append_is_fsynced(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "a.jsonl", key)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr("sandbox.audit.log.os.fsync", lambda fd: (synced.append(fd), real(fd))[1])
    for _ in range(3):
        log.append("upload", actor="owner")
    assert len(synced) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "checkpoint"}, "reserved"),
        ({"kind": "Bad Kind"}, "lowercase identifier"),
        ({"actor": ""}, "actor must be a non-empty string"),
        ({"subject": {"Job": "x"}}, "subject key"),
        ({"data": {"x": float("nan")}}, "no NaN"),
        ({"data": {"x": object()}}, "JSON object"),
        ({"data": {"x": "\ud800"}}, "JSON object"),
        ({"data": {"blob": "x" * MAX_ENTRY_BYTES}}, "keep data small"),
        ({"data": [1, 2]}, "must be JSON objects"),
        ({"data": {1: "a", "b": 2}}, "JSON object"),
    ],
)
def test_bad_entries_are_refused_before_anything_is_written(
    tmp_path: Path, key: Ed25519PrivateKey, kwargs: dict[str, Any], match: str
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, key)
    args: dict[str, Any] = {"kind": "upload", "actor": "owner", **kwargs}
    with pytest.raises(InvalidInput, match=match):
        log.append(args.pop("kind"), **args)
    assert path.read_bytes() == b""
    log.append("upload", actor="owner")  # the log is still usable
    log.close()
    assert verify_log(path, key.public_key()).ok


def test_a_failed_write_leaves_no_partial_line(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, key)
    log.append("upload", actor="owner")
    real_write = os.write

    def half_then_full_disk(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sandbox.audit.log.os.write", half_then_full_disk)
    with pytest.raises(FailedPrecondition, match="No space left on device"):
        log.append("approval", actor="owner")
    monkeypatch.undo()
    assert len(read_lines(path)) == 1  # cut back to the last whole entry
    log.append("approval", actor="owner")
    log.close()
    assert verify_log(path, key.public_key()).ok


def test_writer_refuses_a_log_that_ends_mid_line(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = build(tmp_path / "a.jsonl", key, 3)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FailedPrecondition, match="incomplete line 4"):
        AuditLog(path, key).append("upload", actor="owner")


def test_writer_refuses_a_log_truncated_or_replaced_while_open(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, key)
    log.append("upload", actor="owner")
    log.append("upload", actor="owner")
    os.truncate(path, 10)
    with pytest.raises(FailedPrecondition, match="shrank"):
        log.append("upload", actor="owner")
    path.unlink()
    path.write_bytes(b"")
    with pytest.raises(FailedPrecondition, match="removed or replaced"):
        log.append("upload", actor="owner")


def test_writer_refuses_a_broken_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = build(tmp_path / "a.jsonl", key, 5)
    lines = read_lines(path)
    del lines[2]
    write_lines(path, lines)
    with pytest.raises(FailedPrecondition, match="line 3 breaks the chain"):
        AuditLog(path, key).append("upload", actor="owner")


def test_writer_refuses_a_symlinked_log(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "a.jsonl").symlink_to(target)
    with pytest.raises(FailedPrecondition, match="it is a symbolic link; it must be a regular"):
        AuditLog(tmp_path / "a.jsonl", key)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FailedPrecondition, match="is not a regular file"):
        AuditLog(tmp_path / "fifo", key)


def test_the_log_directory_is_created_owner_only(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "new" / "dir" / "audit.jsonl"
    with AuditLog(path, key) as log:
        log.append("upload", actor="owner")
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert verify_log(path, key.public_key()).ok


# ------------------------------------------------------------------------ concurrency


def _append_many(path: str, key_path: str, worker: int, count: int, go: Any) -> None:
    key = load_signing_key(Path(key_path))
    go.wait(10)
    with AuditLog(Path(path), key) as log:
        for i in range(count):
            log.append("job_step", actor=f"worker-{worker}", data={"i": i})


def test_concurrent_appends_from_processes_form_one_valid_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    key_path = tmp_path / "key.pem"
    save_signing_key(key, key_path)
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    workers = [
        ctx.Process(target=_append_many, args=(str(path), str(key_path), w, 50, go))
        for w in range(4)
    ]
    for process in workers:
        process.start()
    go.set()
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    result = verify_log(path, key.public_key())
    assert result.ok, result.summary()
    assert result.warnings == []  # the last writer to close signed the tail
    values = entries(path)
    regular = [v for v in values if v["kind"] != "checkpoint"]
    assert len(regular) == 200
    for w in range(4):  # each writer's entries are all there, in its order
        assert [v["data"]["i"] for v in regular if v["actor"] == f"worker-{w}"] == list(range(50))
    run = 0  # never more than 100 unsigned entries in a row, across processes
    for value in values:
        run = 0 if value["kind"] == "checkpoint" else run + 1
        assert run <= 100
    assert sum(v["kind"] == "checkpoint" for v in values) >= 2


# ------------------------------------------------------------------------ tampering


@pytest.fixture
def log10(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """Entries 0..9, a checkpoint at 10, entries 11..20, a checkpoint at 21 (closed)."""
    return build(tmp_path / "audit.jsonl", key, 20, every=10)


EDITS: dict[str, Any] = {
    "seq": 70,
    "time": "2001-01-01T00:00:00.000000Z",
    "kind": "download",
    "actor": "mallory",
    "subject": {"job": "another"},
    "data": {"step": 99},
    "prev": "ab" * 32,
    "hash": "cd" * 32,
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_editing_any_field_of_an_entry_is_named(
    log10: Path, key: Ed25519PrivateKey, name: str
) -> None:
    values = entries(log10)
    values[7][name] = EDITS[name]
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert not result.ok
    seq = values[7]["seq"]
    assert f"entry {seq} (line 8): hash does not match its contents (edited?)" in messages(result)


def test_an_edit_with_a_recomputed_hash_breaks_the_link_to_the_next_entry(
    log10: Path, key: Ed25519PrivateKey
) -> None:
    values = entries(log10)
    values[7] = rehash({**values[7], "actor": "mallory"})
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "entry 8 (line 9): prev does not match entry 7's hash (line 8) "
        "(deleted, reordered or inserted?)"
    ]


def test_rewriting_the_whole_chain_consistently_breaks_the_next_checkpoint(
    log10: Path, key: Ed25519PrivateKey
) -> None:
    values = entries(log10)
    values[3]["data"] = {"step": "forged"}
    for i in range(3, len(values)):  # the forger re-links every later entry
        if i > 3:
            values[i]["prev"] = values[i - 1]["hash"]
        values[i] = rehash(values[i])
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "checkpoint at entry 10 (line 11): signature invalid (the checkpoint or the "
        "entries before it were altered)",
        "checkpoint at entry 21 (line 22): signature invalid (the checkpoint or the "
        "entries before it were altered)",
    ]
    assert result.signed_through is None


def test_deleting_the_first_entry(log10: Path, key: Ed25519PrivateKey) -> None:
    lines = read_lines(log10)
    write_lines(log10, lines[1:])
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "entry 1 (line 1): seq 1 expected 0 (entries before it deleted?)",
        "entry 1 (line 1): prev is not 64 zeros, so it is not the first entry "
        "(the start of the log was deleted?)",
    ]


def test_deleting_a_middle_entry(log10: Path, key: Ed25519PrivateKey) -> None:
    lines = read_lines(log10)
    del lines[7]
    write_lines(log10, lines)
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "entry 8 (line 8): seq 8 expected 7 (entry 7 deleted?)",
        "entry 8 (line 8): prev does not match entry 6's hash (line 7) "
        "(deleted, reordered or inserted?)",
    ]


def test_deleting_the_last_entry_is_a_warning_alone_and_an_error_against_an_anchor(
    log10: Path, key: Ed25519PrivateKey
) -> None:
    before = verify_log(log10, key.public_key())
    assert before.head is not None
    lines = read_lines(log10)
    write_lines(log10, lines[:-1])  # the closing checkpoint goes
    result = verify_log(log10, key.public_key())
    assert result.ok  # nothing in the file itself shows it (documented)
    assert [w.code for w in result.warnings] == ["unsigned_tail"]
    assert "lines 12..21 come after the last checkpoint (entry 10)" in result.warnings[0].message
    anchored = verify_log(log10, key.public_key(), anchor=before.head)
    assert messages(anchored) == [
        "the anchor names entry 21 but the log ends at entry 20: entries were removed "
        "from the end (truncated)"
    ]


def test_truncating_whole_lines_down_to_a_checkpoint_is_found_only_with_an_anchor(
    log10: Path, key: Ed25519PrivateKey
) -> None:
    head = verify_log(log10, key.public_key()).head
    write_lines(log10, read_lines(log10)[:11])  # ends exactly at the checkpoint 10
    assert verify_log(log10, key.public_key()).ok
    assert not verify_log(log10, key.public_key(), anchor=head).ok


def test_an_anchor_detects_a_rewritten_log(log10: Path, key: Ed25519PrivateKey) -> None:
    head = verify_log(log10, key.public_key()).head
    assert head is not None
    assert verify_log(log10, key.public_key(), anchor=head).ok
    other = LogHead(head.seq, "00" * 32)
    result = verify_log(log10, key.public_key(), anchor=other)
    assert messages(result) == [
        "entry 21 (line 22): hash differs from the anchor's (the log was rewritten)"
    ]
    assert LogHead.parse(str(head)) == head
    with pytest.raises(InvalidInput, match="SEQ:HASH"):
        LogHead.parse("12:xyz")


def test_swapping_two_entries(log10: Path, key: Ed25519PrivateKey) -> None:
    lines = read_lines(log10)
    lines[4], lines[5] = lines[5], lines[4]
    write_lines(log10, lines)
    result = verify_log(log10, key.public_key())
    assert only_errors(result) == {
        (5, "seq"),
        (5, "prev"),
        (6, "seq"),
        (6, "prev"),
        (7, "seq"),
        (7, "prev"),
    }
    assert "entry 5 (line 5): seq 5 expected 4 (entry 4 deleted?)" in messages(result)
    assert (
        "entry 4 (line 6): seq 4 expected 6 (entries reordered, duplicated or inserted?)"
        in messages(result)
    )


def test_inserting_an_entry(log10: Path, key: Ed25519PrivateKey) -> None:
    values = entries(log10)
    forged = rehash({**values[7], "seq": 8, "prev": values[7]["hash"], "actor": "mallory"})
    values.insert(8, forged)
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "entry 8 (line 10): seq 8 expected 9 (entries reordered, duplicated or inserted?)",
        "entry 8 (line 10): prev does not match entry 8's hash (line 9) "
        "(deleted, reordered or inserted?)",
    ]


def test_a_corrupted_checkpoint_signature(log10: Path, key: Ed25519PrivateKey) -> None:
    values = entries(log10)
    sig = bytearray(base64.b64decode(values[-1]["data"]["sig"]))
    sig[0] ^= 1
    values[-1]["data"]["sig"] = base64.b64encode(bytes(sig)).decode()
    put(log10, [*values[:-1], rehash(values[-1])])
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "checkpoint at entry 21 (line 22): signature invalid (the checkpoint or the "
        "entries before it were altered)"
    ]
    assert result.signed_through == 10
    put(log10, values)  # without re-hashing, the edit shows twice
    assert only_errors(verify_log(log10, key.public_key())) == {(22, "hash"), (22, "signature")}


def test_checkpoints_by_another_key(
    log10: Path, key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    result = verify_log(log10, other_key.public_key())
    assert messages(result)[0] == (
        f"checkpoint at entry 10 (line 11): signed by key {key_id(key)}, not by the given key "
        f"{key_id(other_key)} (wrong --key, or a forged checkpoint)"
    )
    assert result.signed_through is None
    assert [w.code for w in result.warnings] == ["unsigned"]


def test_truncating_the_file_mid_line(log10: Path, key: Ed25519PrivateKey) -> None:
    data = log10.read_bytes()
    log10.write_bytes(data[: len(data) - 40])
    result = verify_log(log10, key.public_key())
    assert messages(result) == [
        "line 22: incomplete last line (no newline at the end): the file was cut mid-entry "
        "or a write was interrupted"
    ]
    cut = data.index(b"\n", len(data) // 2) - 5  # cut in the middle of the file
    log10.write_bytes(data[:cut])
    assert [p.code for p in verify_log(log10, key.public_key()).errors] == ["incomplete"]


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        (b"not json", "malformed", "line 6: not valid JSON"),
        (b"[1,2]", "malformed", "a JSON object is required, found list"),
        (b'{"seq":5}', "malformed", "missing actor, data, hash, kind, prev, subject, time"),
        (b"", "empty", "line 6: empty line"),
        (b"\xff\xfe{}", "malformed", "not valid UTF-8 (byte 1)"),
        (b"x" * (MAX_ENTRY_BYTES + 10), "too_long", f"longer than {MAX_ENTRY_BYTES} bytes"),
    ],
)
def test_malformed_lines_are_reported_and_verification_goes_on(
    log10: Path, key: Ed25519PrivateKey, line: bytes, code: str, fragment: str
) -> None:
    lines = read_lines(log10)
    lines[5] = line
    lines[15] = b"{}"
    write_lines(log10, lines)
    result = verify_log(log10, key.public_key())
    assert [(p.line, p.code) for p in result.errors] == [(6, code), (16, "malformed")]
    assert fragment in result.errors[0].message
    assert result.checkpoints == 2  # later checkpoints still checked


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("seq", "7", "seq must be a non-negative integer, found '7'"),
        ("seq", True, "seq must be a non-negative integer"),
        ("seq", -1, "seq must be a non-negative integer"),
        ("hash", "abc", "hash must be 64 lowercase hex digits"),
        ("prev", "AB" * 32, "prev must be 64 lowercase hex digits"),
        ("time", "2025-13-01T00:00:00Z", "time must be RFC 3339 UTC"),
        ("time", "2025-01-01 00:00:00", "time must be RFC 3339 UTC"),
        ("kind", 3, "kind must be a lowercase identifier"),
        ("actor", "", "actor must be a non-empty string"),
        ("subject", {"job": 1}, "subject must be an object of strings"),
        ("data", [1], "data must be an object"),
        ("extra", 1, "unknown field(s) extra"),
    ],
)
def test_wrong_types_are_reported_not_raised(
    log10: Path, key: Ed25519PrivateKey, name: str, value: Any, fragment: str
) -> None:
    values = entries(log10)
    values[2][name] = value
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert [(p.line, p.code) for p in result.errors] == [(3, "malformed")]
    assert fragment in result.errors[0].message


def test_a_malformed_checkpoint_is_reported(log10: Path, key: Ed25519PrivateKey) -> None:
    values = entries(log10)
    values[10]["data"] = {"sig": 5}
    put(log10, values)
    result = verify_log(log10, key.public_key())
    assert "checkpoint data must be {key_id, sig} strings" in result.errors[0].message


RESPELLINGS: dict[str, Any] = {
    "spaces": lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False).encode(),
    "escapes": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")).encode(),
    "key order": lambda v: json.dumps(
        dict(reversed(list(v.items()))), separators=(",", ":"), ensure_ascii=False
    ).encode(),
    "trailing space": lambda v: canonical(v) + b" ",
    "leading tab": lambda v: b"\t" + canonical(v),
    "number spelling": lambda v: canonical(v).replace(b",2.5,", b",2.50,"),
    "duplicate key": lambda v: canonical(v).replace(b'{"actor":', b'{"actor":"x","actor":'),
}


@pytest.mark.parametrize("how", sorted(RESPELLINGS))
def test_the_same_value_spelled_differently_is_rejected(
    log10: Path, key: Ed25519PrivateKey, how: str
) -> None:
    """The hash covers the parsed value, so only the canonical-form rule catches these."""
    lines = read_lines(log10)
    value = json.loads(lines[3])
    respelled = RESPELLINGS[how](value)
    assert respelled != lines[3]
    assert json.loads(respelled) == value
    lines[3] = respelled
    write_lines(log10, lines)
    result = verify_log(log10, key.public_key())
    assert only_errors(result) == {(4, "not_canonical")}
    assert messages(result)[0].startswith("entry 3 (line 4): not in canonical form")


def test_a_missing_log_an_empty_log_and_not_a_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(NotFound, match="audit log .* does not exist"):
        verify_log(tmp_path / "none.jsonl", key.public_key())
    os.mkfifo(tmp_path / "fifo")  # refused at once, never waited on
    with pytest.raises(InvalidInput, match="is not a regular file"):
        verify_log(tmp_path / "fifo", key.public_key())
    with pytest.raises(InvalidInput, match="is not a regular file"):
        verify_log(tmp_path, key.public_key())
    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = verify_log(tmp_path / "empty.jsonl", key.public_key())
    assert result.ok
    assert [w.code for w in result.warnings] == ["empty"]


def test_the_result_serialises_for_json_output(log10: Path, key: Ed25519PrivateKey) -> None:
    lines = read_lines(log10)
    del lines[3]
    write_lines(log10, lines)
    result = verify_log(log10, key.public_key())
    document = json.loads(json.dumps(result.to_dict()))
    assert document["ok"] is False
    assert document["errors"][0] == {
        "line": 4,
        "seq": 4,
        "code": "seq",
        "message": "entry 4 (line 4): seq 4 expected 3 (entry 3 deleted?)",
    }
    assert "INVALID (2)" in result.summary()


# --------------------------------------------------------- any single-byte change


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> bytes:
    path = build(tmp_path_factory.mktemp("small") / "audit.jsonl", key, 9, every=4)
    assert verify_log(path, key.public_key()).ok
    return path.read_bytes()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    small_log: bytes, key: Ed25519PrivateKey, tmp_path: Path, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(small_log) - 1), label="position")
    original = small_log[position]
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original), label="byte")
    mutated = bytearray(small_log)
    mutated[position] = new
    path = tmp_path / "mutated.jsonl"
    path.write_bytes(bytes(mutated))
    assert not verify_log(path, key.public_key()).ok


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> bytes:
    path = build(tmp_path_factory.mktemp("tiny") / "audit.jsonl", key, 3, every=2)
    return path.read_bytes()


def test_every_position_changed_is_detected(
    tiny_log: bytes, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Exhaustive over positions, writing a space (whitespace is never insignificant)."""
    path = tmp_path / "mutated.jsonl"
    for position, original in enumerate(tiny_log):
        mutated = bytearray(tiny_log)
        mutated[position] = 0x20 if original != 0x20 else 0x21
        path.write_bytes(bytes(mutated))
        assert not verify_log(path, key.public_key()).ok, position
